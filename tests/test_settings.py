"""One source for every setting: a row runs its parameter file over the config's defaults, nothing else.

A notebook's parameters cell names a file, a run directory and overrides; the batch injects a row's
file, run directory and seed. These tests execute each notebook's parameters cell, the assignments
papermill injects, and the cell that builds the config, and compare the result with the parse of
the file alone. The paper rows are held to the study's settings in params/reference_numbers.yaml.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from viscoin_core import batch
from viscoin_core.config import load_config, parse_config, read_params, to_dict
from viscoin_core.train.classifier import ClassifierConfig
from viscoin_core.train.gan import GanConfig
from viscoin_core.train.viscoin import ViscoinConfig

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("demo", "mini", "paper")
REFERENCE = yaml.safe_load((ROOT / "params" / "reference_numbers.yaml").read_text())["study"]
SETTINGS = REFERENCE["settings"]


def code_cells(notebook: Path) -> list[str]:
    nb = json.loads(notebook.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def executed_config(notebook: Path, injected: dict | None, monkeypatch) -> object:
    """What the notebook's config cell builds from its parameters cell, with papermill's injection."""
    parameters, setup = code_cells(notebook)[:2]
    namespace: dict = {}
    monkeypatch.chdir(ROOT / "notebooks")         # where papermill and nbval start the kernel
    exec(parameters, namespace)
    for name, value in (injected or {}).items():   # papermill adds a cell of plain assignments
        exec(f"{name} = {value!r}", namespace)
    exec(setup, namespace)
    return namespace["cfg" if "cfg" in namespace else "config"]


def table_runs() -> list[batch.Run]:
    return [run for profile in PROFILES for name in batch.NUMBERED_TABLES
            for run in batch.plan(name, profile, seeds=2) if run.seed in (0, 1)]


@pytest.mark.parametrize("run", table_runs(), ids=lambda r: f"{r.params_file.parent.name}/{r.params_file.name}/s{r.seed}")
def test_a_row_executes_exactly_its_file_over_the_defaults(run, monkeypatch):
    cls = batch.config_class(run.notebook.stem)
    executed = executed_config(run.notebook, batch.notebook_inputs(run), monkeypatch)
    expected = parse_config(cls, {**read_params(run.params_file), "seed": run.seed}, str(run.params_file))
    assert to_dict(executed) == to_dict(expected)


@pytest.mark.parametrize("notebook,cls", [("02_pretrain_classifier", ClassifierConfig), ("03_finetune_generator", GanConfig),
                                          ("04_cub_reproduction", ViscoinConfig), ("05_nct_ablations", ViscoinConfig)])
def test_a_notebook_stepped_through_runs_the_file_its_cell_names(notebook, cls, monkeypatch):
    path = ROOT / "notebooks" / f"{notebook}.ipynb"
    cell = batch.notebook_parameters(path)
    assert set(cell) <= {"params_file", "run_dir", "overrides", "classes_shown", "results_table", "published_row"}
    assert cell["params_file"].startswith("params/smoke/") and cell["overrides"] == {}
    executed = executed_config(path, None, monkeypatch)
    assert to_dict(executed) == to_dict(load_config(cls, ROOT / cell["params_file"]))


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_of_the_cell(notebook, caplog):
    # A line papermill cannot parse is dropped from its parameters and warned about on every run
    # ("Unable to parse line", then "Passed unknown parameter" when the batch sets it).
    from papermill.inspection import inspect_notebook
    with caplog.at_level("WARNING"):
        names = set(inspect_notebook(str(notebook)))
    assert names == set(batch.notebook_parameters(notebook)) and not caplog.records


def test_notebook_06_trains_the_same_run_notebook_04_makes():
    # 06 trains notebook 04's run directory when it is missing; with another file 04 would refuse to resume it.
    n04 = batch.notebook_parameters(ROOT / "notebooks" / "04_cub_reproduction.ipynb")
    n06 = batch.notebook_parameters(ROOT / "notebooks" / "06_qualitative_figures.ipynb")
    assert (n06["run_dir"], n06["params_file"]) == (n04["run_dir"], n04["params_file"])


def test_overrides_reach_the_config_and_a_bad_one_is_named(monkeypatch):
    path = ROOT / "notebooks" / "04_cub_reproduction.ipynb"
    cfg = executed_config(path, {"overrides": {"iterations": 3}}, monkeypatch)
    assert cfg.iterations == 3 and cfg.n_concepts == read_params(ROOT / "params/smoke/viscoin.yaml")["n_concepts"]
    with pytest.raises(Exception, match="iteratons"):
        executed_config(path, {"overrides": {"iteratons": 3}}, monkeypatch)


def paper_configs(cls: type) -> list[tuple[str, str, object]]:
    """(table, published row, config) of every paper row whose stage takes `cls`."""
    out = []
    for run in table_runs():
        if run.params_file.parent.name == "paper" and run.seed == 0 and batch.config_class(run.notebook.stem) is cls:
            out.append((run.table, run.published_row, load_config(cls, run.params_file)))
    return out


def test_every_paper_viscoin_row_evaluates_every_test_image_and_every_concept():
    rows = paper_configs(ViscoinConfig)
    assert len(rows) == 16   # Table 3: 2 rows (study settings, variants), Tables 4-7: 3 + 2 + 5 + 4
    for table, row, cfg in rows:
        assert (cfg.eval_images, cfg.consistency_concepts, cfg.final_eval_images) == (None, None, 0), (table, row)
        assert (cfg.lpips_backbone, cfg.fid_features) == ("vgg", "inception"), (table, row)


def test_the_defaults_are_the_papers_values():
    # Only what a file leaves out comes from here, so these must be the paper's (and the study's) settings.
    viscoin = ViscoinConfig(f="f.pt", G="G.pt", data="d.yaml")
    paper = {**SETTINGS["viscoin"], **SETTINGS["evaluation"], **SETTINGS["table3_cub_viscoin"]}
    assert {k: getattr(viscoin, k) for k in paper} == paper
    assert (viscoin.eval_images, viscoin.consistency_concepts, viscoin.w_bar) == (None, None, "w_avg")
    f = ClassifierConfig(data="d.yaml")
    assert {k: getattr(f, k) for k in SETTINGS["classifier"]} == SETTINGS["classifier"]
    assert f.epochs == REFERENCE["table1_classifier"]["cub"]["epochs"]
    g = GanConfig(data="d.yaml", start="s.pkl", kimg=1)
    assert (g.arch, g.batch, g.r1_gamma, g.ema_kimg, g.ema_rampup, g.ada_kimg) == ("paper256", 64, 1.0, 20.0, None, 100.0)


def g_real_images(cfg: ViscoinConfig) -> float:
    """How many real images the row's G was fine-tuned on, from the G stage's file that makes it."""
    stem = Path(cfg.G).parts[-3]   # runs/paper/g/<stem>/seed0/G.pt
    return load_config(GanConfig, ROOT / "params" / "paper" / f"{stem}.yaml").kimg * 1000


def test_paper_viscoin_rows_have_the_studys_settings():
    fields = {f.name for f in dataclasses.fields(ViscoinConfig)}
    for table, row, cfg in paper_configs(ViscoinConfig):
        key = batch.load_tables()[table]["published"].split(".")[-1]
        expected = {**SETTINGS["viscoin"], **SETTINGS["evaluation"], **SETTINGS[key], **REFERENCE[key][row]}
        for name, value in expected.items():
            if name in fields:
                assert getattr(cfg, name) == value, f"{table} {row}: {name} = {getattr(cfg, name)}, the study {value}"
            elif name in ("g_real_images",):
                assert g_real_images(cfg) == float(value), f"{table} {row}: G trained on {g_real_images(cfg)} images"


def test_paper_classifier_and_generator_rows_have_the_studys_settings():
    for table, row, cfg in paper_configs(ClassifierConfig):
        published = REFERENCE["table1_classifier"][row]
        assert {k: getattr(cfg, k) for k in SETTINGS["classifier"]} == SETTINGS["classifier"], row
        assert cfg.epochs == published["epochs"], row
        assert cfg.weight_decay == (published["weight_decay"] or 0.0), row
        assert cfg.class_weights == (published.get("class_weights") == "inverse_frequency"), row
    rows = paper_configs(GanConfig)
    assert len(rows) == 4
    for table, row, cfg in rows:
        published = REFERENCE["table2_generator"][row]
        assert cfg.kimg * 1000 == float(published["real_images"]), row
        assert cfg.start == SETTINGS["generator_start"][published["start"]], row


# What a rehearsal row may change: budgets, and the inputs this machine cannot have (data trees,
# network pickles, downloaded weights replaced by the same architectures with random weights).
REHEARSAL_BUDGETS = {"epochs", "kimg", "snapshot_kimg", "iterations", "eval_every", "eval_subset", "checkpoint_every",
                     "final_eval_images", "eval_images", "consistency_concepts", "faithfulness_images",
                     "consistency_samples", "fid_images", "log_every",
                     "workers", "num_workers", "batch_gpu", "batch"}   # batch: G rows only, see budget_g.yaml
REHEARSAL_INPUTS = {"data", "root", "cache_dir", "f", "G", "start", "pretrained", "lpips_backbone", "fid_features"}


def stage_class(name: str) -> type:
    from viscoin_core.data.prepare import DataConfig
    return {"data": DataConfig, "classifier": ClassifierConfig, "gan": GanConfig, "viscoin": ViscoinConfig}[name.split("_")[0]]


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "params" / "rehearsal").glob("*.yaml")
                                        if not p.name.startswith("budget")), ids=lambda p: p.name)
def test_a_rehearsal_row_is_its_paper_row_with_only_budgets_and_inputs_changed(path):
    cls = stage_class(path.stem)
    rehearsal = to_dict(load_config(cls, path))
    paper = to_dict(load_config(cls, ROOT / "params" / "paper" / path.name))
    changed = {k for k in paper if paper[k] != rehearsal[k]}
    assert changed <= REHEARSAL_BUDGETS | REHEARSAL_INPUTS, changed - REHEARSAL_BUDGETS - REHEARSAL_INPUTS
    assert "batch" not in changed or path.stem.startswith("gan_"), "only G's step shrinks (budget_g.yaml says why)"
    # Every path it reads is the rehearsal's, never the paper's own data, runs or pickles.
    reads = {"data": ("root", "cache_dir"), "classifier": ("data",), "gan": ("data", "start"),
             "viscoin": ("data", "f", "G")}[path.stem.split("_")[0]]
    for key in reads:
        assert "rehearsal" in rehearsal[key], (key, rehearsal[key])


# The paper's value of every option that is not the paper's method, and what each profile's Table 3
# variants row sets. The temperature is fitted to the stand-ins' over-confident f, so only the CPU
# profiles use it; the paper profile's variants row keeps Omega's multiplier and latent regression.
PAPER_VALUES = {"omega_lr_multiplier": 0.01, "latent_regression_weight": 0.0, "f_temperature": 1.0}
VARIANTS = {"paper": {"omega_lr_multiplier": 1.0, "latent_regression_weight": 1.0},
            "rehearsal": {"omega_lr_multiplier": 1.0, "latent_regression_weight": 1.0},
            "demo": {"f_temperature": 20.0}, "mini": {"f_temperature": 30.0}}


@pytest.mark.parametrize("profile", ["paper", "rehearsal", "demo", "mini"])
def test_the_variants_are_on_in_table3s_variants_row_only(profile):
    # A reader compares Table 3's two rows: they differ in the variants and nothing else, and every
    # other row of the profile keeps the paper's values.
    runs = [run for name in batch.NUMBERED_TABLES for run in batch.plan(name, profile)
            if batch.config_class(run.notebook.stem) is ViscoinConfig]
    variants = [run for run in runs if run.params_file.name == "viscoin_cub_variants.yaml"]
    assert len(variants) == 1 and variants[0].table == "table3"
    row = to_dict(load_config(ViscoinConfig, variants[0].params_file))
    base = to_dict(load_config(ViscoinConfig, variants[0].params_file.with_name("viscoin_cub.yaml")))
    wanted = VARIANTS[profile]
    assert {k for k in row if row[k] != base[k]} == set(wanted)
    assert {k: row[k] for k in wanted} == wanted
    assert {k: base[k] for k in PAPER_VALUES} == PAPER_VALUES
    for run in runs:
        if run not in variants:
            cfg = load_config(ViscoinConfig, run.params_file)
            assert {k: getattr(cfg, k) for k in PAPER_VALUES} == PAPER_VALUES, run.params_file
