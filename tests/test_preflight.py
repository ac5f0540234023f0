"""Preflight (`batch TABLE --check`): every missing input named before any work, nothing else."""

import shutil
from pathlib import Path

import pytest
import torch

from viscoin_core import batch, preflight
from viscoin_core.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the repository's params and notebooks, an empty torch hub cache, no GPU, ample disk."""
    for folder in ("params", "notebooks", "pretrained"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**13, 0, 10**13))
    return tmp_path


def check(root: Path, names: list[str], profile: str) -> list[str]:
    runs = [run for name in names for run in batch.plan(name, profile, root=root)]
    problems, plan = batch.preflight_check(runs, profile, root)
    assert len([line for line in plan if "seed" in line]) == len({(r.params_file, r.seed) for r in runs})
    return problems


def test_paper_profile_names_the_datasets_pickles_weights_and_gpu(project):
    problems = check(project, list(batch.NUMBERED_TABLES), "paper")
    text = "\n".join(problems)
    for piece in ("raw/CUB_200_2011", "raw/nct", "ffhq-res256-mirror-paper256-noaug.pkl", "brecahad.pkl",
                  "resnet50-0676ba61.pth", preflight.VGG16_WEIGHTS, preflight.INCEPTION_WEIGHTS, "no CUDA GPU"):
        assert piece in text, piece
    # f and G of the VisCoIN rows are made by Tables 1-2 in the same plan: not missing.
    assert "'f' =" not in text and "'G' =" not in text
    assert len(problems) == 9 and not any("disk" in p for p in problems)


def test_weight_files_copied_into_the_hub_cache_are_found(project):
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("resnet50-0676ba61.pth", preflight.VGG16_WEIGHTS, preflight.INCEPTION_WEIGHTS):
        (checkpoints / name).write_bytes(b"weights")
    problems = check(project, list(batch.NUMBERED_TABLES), "paper")
    assert not any(".pth" in p for p in problems) and len(problems) == 6


def test_a_prepared_input_or_an_earlier_row_clears_its_line(project):
    (project / "raw" / "CUB_200_2011").mkdir(parents=True)
    problems = check(project, ["table1"], "paper")
    assert not any("CUB_200_2011" in p for p in problems) and any("raw/nct" in p for p in problems)
    # Table 3 alone reads Table 1's and 2's runs, which this plan does not make.
    problems = check(project, ["table3"], "paper")
    assert any("'f' = runs/paper/f/classifier_cub/seed0/f.pt is missing" in p for p in problems)
    assert any("'G' = runs/paper/g/gan_cub/seed0/G.pt is missing" in p for p in problems)


def test_the_demo_profile_is_ready_and_asks_for_no_download_or_gpu(project):
    assert check(project, list(batch.NUMBERED_TABLES), "demo") == []


def test_missing_pretrained_stand_ins_are_named_with_make_pretrained(project):
    shutil.rmtree(project / "pretrained")
    problems = check(project, ["table1", "table2"], "demo")
    assert len(problems) == 4 and all("make pretrained" in p for p in problems)
    assert {p.split(" = ")[1].split(" ")[0] for p in problems} == {"pretrained/toybirds", "pretrained/toytissue"}


def test_too_little_disk_is_a_problem(project, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**10, 0, 10**8))
    problems = check(project, list(batch.NUMBERED_TABLES), "demo")
    assert len(problems) == 1 and problems[0].startswith("disk:") and "0.1 GB free" in problems[0]


def test_a_gpu_found_is_described_in_the_plan(project, monkeypatch):
    class Props:
        name, total_memory = "Test GPU", 80 * 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props)
    runs = batch.plan("table1", "paper", root=project)
    problems, plan = batch.preflight_check(runs, "paper", project)
    assert "GPU: Test GPU, 80 GiB (2 row(s) ask for one)" in plan and not any("GPU" in p for p in problems)


def test_step_times_give_hours(project, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"name": "viscoin", "seconds_per_step": 0.36}\nnot json\n')
    runs = batch.plan("table3", "paper", root=project)
    _, plan = batch.preflight_check(runs, "paper", project, preflight.read_step_times(bench))
    assert any("100000 steps, 10.0 h" in line for line in plan)   # 1e5 x 0.36 s = 10 h


def test_step_times_of_another_bench_size_are_not_read(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"name": "viscoin", "size": "paper", "seconds_per_step": 18.2}\n'
                     '{"name": "viscoin", "size": "demo", "seconds_per_step": 0.76}\n')
    assert preflight.read_step_times(bench, "paper") == {"viscoin": 18.2}
    assert preflight.read_step_times(bench, "rehearsal") == {"viscoin": 18.2}
    assert preflight.read_step_times(bench, "demo") == {"viscoin": 0.76}


def test_the_batch_refuses_to_start_when_anything_is_missing(project):
    with pytest.raises(ConfigError, match="raw/CUB_200_2011") as err:
        batch.run_tables(["table1"], "paper", root=project)
    assert "--check" in str(err.value) and not (project / "runs").exists()


def test_check_command_exits_1_and_names_problems(project, monkeypatch, capsys):
    monkeypatch.setattr(batch, "repo_root", lambda: project)
    assert batch.main(["table1", "--profile", "paper", "--check"]) == 1
    out = capsys.readouterr()
    assert "plan for table1" in out.out and "raw/CUB_200_2011" in out.err
    assert batch.main(["table3", "--profile", "demo", "--check"]) == 1   # its f and G are not made by this plan
    assert batch.main(["all", "--profile", "demo", "--check"]) == 0
