"""Rebuild a results table: its rows -> papermill runs -> results/<profile>/<table>.{md,csv}.

    python -m viscoin_core.batch table6 --profile demo [--seeds 3] [--force] [--executor local|slurm]
    python -m viscoin_core.batch all --profile demo --jobs 2
    python -m viscoin_core.batch all --profile paper --executor slurm

`params/tables.yaml` maps each table to its rows: the notebook that makes a row and the parameter
file (`params/<profile>/<file>`) it runs with. Each (row, seed) executes the notebook with
papermill into its run directory, `runs/<profile>/<stage>/<file stem>/seed<k>/`, keeping the
executed notebook there. A run whose `metrics.json` exists is skipped (unless `--force`, or its
row's file has changed since: then it runs again), so an interrupted batch resumes; a failed row
is reported at the end and marked in the table, never dropped. `all` plans every table first, so
a row that several tables share runs once, and rows run side by side (`--jobs`, or Slurm) as soon
as the runs they read are finished; the figures step (notebook 06) is one more such run, after the
rows of Tables 2 and 3. Table 8 lists every experiment's settings, generated from the
parameter files. Making the tables from the runs' metrics is `viscoin_core.tables`.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

from viscoin_core.config import ConfigError, parse_config, read_params, repo_root, to_dict
from viscoin_core.runs import changed_keys, run_directory
from viscoin_core.tables import (NUMBERED_TABLES, build_table, experiments_table, load_tables, table_note,
                                 write_table)

PROFILES = ("smoke", "demo", "mini", "paper", "rehearsal")
STAGES = ("f", "g", "viscoin")   # the pipeline, in order: each stage reads the one before it

# The kernel's own log (not the notebook's output) at CRITICAL: ipykernel warns on every start that its
# localhost TCP sockets are unencrypted, and jupyter_client begins every shutdown with a SIGINT, which a
# kernel still finishing its last reply logs as the ERROR "KeyboardInterrupt caught in kernel". Neither
# says anything about the row; a failing cell reaches the batch through papermill, not this log.
QUIET_KERNEL = ["--IPKernelApp.log_level=CRITICAL"]

# The config class each notebook turns its parameters into; batch validates a row against it
# before any work starts, so a mistyped key fails at once with the file named.
NOTEBOOK_CONFIGS = {
    "02_pretrain_classifier": "viscoin_core.train.classifier:ClassifierConfig",
    "03_finetune_generator": "viscoin_core.train.gan:GanConfig",
    "04_cub_reproduction": "viscoin_core.model:ViscoinConfig",
    "05_nct_ablations": "viscoin_core.model:ViscoinConfig",
}


@dataclass(frozen=True, eq=False)  # hashed by identity: a run is one execution
class Run:
    """One execution of a notebook: a row of a table, with one seed."""
    table: str
    label: str
    notebook: Path
    params_file: Path
    params: dict
    run_dir: Path
    seed: int
    published_row: str = ""
    reads: tuple[Path, ...] = ()   # run directories it reads besides those its parameters name
    finished_by: str | None = "metrics.json"   # the file in run_dir that marks it finished; None: it always runs
    call: Callable[[], Path] | None = None     # what executes it, when not papermill on its notebook


FIGURES_NOTEBOOK = "06_qualitative_figures"


# ---------------------------------------------------------------------------------------------
# Reading tables and rows


def notebook_parameters(notebook: Path) -> dict:
    """Names and default values assigned in a notebook's cell tagged `parameters`."""
    nb = json.loads(Path(notebook).read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            values = {}
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            values[target.id] = ast.literal_eval(node.value)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    values[node.target.id] = ast.literal_eval(node.value) if node.value else None
            return values
    raise ConfigError(f"{notebook} has no cell tagged 'parameters' (papermill needs one)")


def config_class(notebook_stem: str) -> type | None:
    """The dataclass a notebook validates its parameters with (None for figure notebooks)."""
    target = NOTEBOOK_CONFIGS.get(notebook_stem)
    if target is None:
        return None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def check_row(notebook: Path, params_file: Path, params: dict) -> None:
    """Fail before any work when a row's file names a key its stage's config lacks, or a bad value.

    A row runs exactly its file over the config's defaults (the paper's values): the notebook takes
    only `params_file`, `run_dir` and `overrides`, so none of its own values can leak in.
    """
    cls = config_class(notebook.stem)
    if cls is None:
        raise ConfigError(f"{params_file}: notebook {notebook.name} has no config class in NOTEBOOK_CONFIGS, "
                          "so a table cannot run it")
    parse_config(cls, params, source=str(params_file))


def plan(table: str, profile: str, seeds: int | None = None, tables: dict | None = None,
         root: Path | None = None) -> list[Run]:
    """Every run a table needs in a profile, each validated before anything executes."""
    root = root or repo_root()
    tables = tables or load_tables(root / "params" / "tables.yaml")
    if table not in tables:
        raise ConfigError(f"unknown table '{table}'; known: {sorted(tables)} and 'all', 'table8'")
    spec = tables[table]
    notebook = root / "notebooks" / f"{spec['notebook']}.ipynb"
    if not notebook.is_file():
        raise ConfigError(f"{table}: notebook {notebook} does not exist")
    runs = []
    for row in spec["rows"]:
        params_file = root / "params" / profile / row["params"]
        params = read_params(params_file)
        check_row(notebook, params_file, params)
        n_seeds = seeds or int(row.get("seeds", spec.get("seeds", 1)))
        for seed in range(n_seeds):
            run_dir = run_directory(profile, spec["stage"], params_file.stem, seed, root)
            runs.append(Run(table, row["label"], notebook, params_file, params, run_dir, seed,
                            str(row.get("published", ""))))
    return runs


# ---------------------------------------------------------------------------------------------
# Executing

def notebook_inputs(run: Run) -> dict:
    """What papermill injects into a row's notebook: its parameter file, run directory and seed, and,
    for notebooks that show their row beside the published one, which row that is."""
    root = run.notebook.parents[1]
    inputs = {"params_file": str(run.params_file.relative_to(root)), "run_dir": str(run.run_dir.relative_to(root)),
              "overrides": {"seed": run.seed}}
    if "results_table" in notebook_parameters(run.notebook):
        inputs.update(results_table=run.table, published_row=run.published_row)
    return inputs


def execute(run: Run) -> Path:
    """Run one notebook with papermill into its run directory; returns the executed notebook's path.
    A run with its own `call` (the figures step) runs that instead and returns what it returns."""
    import papermill

    if run.call is not None:
        return run.call()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    output = run.run_dir / f"{run.notebook.stem}.ipynb"
    papermill.execute_notebook(str(run.notebook), str(output), parameters=notebook_inputs(run),
                               cwd=str(run.notebook.parent), progress_bar=False, kernel_name="python3",
                               extra_arguments=QUIET_KERNEL)
    return output


def execute_in_worker(run: Run) -> Path:
    """`execute` in a worker process; a failure comes back as a RuntimeError carrying its message,
    since not every notebook error survives the trip between processes."""
    try:
        return execute(run)
    except Exception as err:  # noqa: BLE001  (re-raised with its text)
        raise RuntimeError(f"{type(err).__name__}: {err}".strip()) from None


def run_config(run: Run) -> Any:
    """The validated config a run executes: its file over the config's defaults, with its seed."""
    return parse_config(config_class(run.notebook.stem), {**run.params, "seed": run.seed}, source=str(run.params_file))


def stage_of(run: Run) -> str:
    """The stage a run belongs to: runs/<profile>/<stage>/<stem>/seed<k>."""
    return run.run_dir.parents[1].name


def preflight_check(runs: list[Run], profile: str, root: Path, step_times: dict | None = None) -> tuple[list, list]:
    """`preflight.check` on planned runs, each run once (a row several tables share is planned once per table)."""
    from viscoin_core import preflight
    unique = list({(r.params_file, r.seed): r for r in runs}.values())
    return preflight.check(unique, profile, run_config, stage_of, root, step_times)


def make_executor(kind: str, folder: Path, cluster: str | None = None, **slurm: Any):
    """None for in-process execution; a submitit executor for 'slurm' (cluster='local' in tests)."""
    if kind == "local":
        return None
    if kind != "slurm":
        raise ConfigError(f"--executor {kind!r} is not allowed; expected 'local' or 'slurm'")
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**slurm)
    return executor


def depends_on(run: Run, other: Run) -> bool:
    """Whether `run` reads what `other` makes: one of its parameters names `other`'s run directory
    (or a file in it), or `other`'s parameter file (an FID classifier is named by its file)."""
    root = run.notebook.parents[1]
    made = other.run_dir.resolve()
    if any(path.resolve() == made for path in run.reads):
        return True
    for value in run.params.values():
        if isinstance(value, str) and value:
            path = (root / value).resolve()
            if path == made or made in path.parents or path == other.params_file.resolve():
                return True
    return False


def changed_settings(run: Run) -> list[str]:
    """The settings in which a finished run's config.json differs from what its row's file asks for
    now (with the run's seed); [] when they agree or the run has no config.json to compare."""
    path = run.run_dir / "config.json"
    if not path.exists():
        return []
    ran = json.loads(path.read_text()).get("config", {})
    wanted = to_dict(parse_config(config_class(run.notebook.stem), {**run.params, "seed": run.seed},
                                  source=str(run.params_file)))
    return changed_keys(ran, wanted)


def run_all(runs: list[Run], force: bool = False, executor=None, jobs: int = 1) -> dict[Run, str]:
    """Execute every unfinished run; returns run -> 'done' | 'skipped' | 'failed: <reason>'.

    A finished run (metrics.json) is skipped while its config.json matches its row's file. Once the
    file has changed, the row executes again: its trainer goes on from the checkpoint when only a
    budget grew (e.g. `iterations`) and otherwise refuses, naming the changed keys; a stale result
    never stands in a table. Runs that share a run directory (one row in several tables) execute
    once. With `jobs` > 1 (or a submitit `executor`) independent runs execute side by side; a run
    waits for the runs it reads (`depends_on`), so a G waits for the f whose features score it.
    """
    status: dict[Run, str] = {}
    first: dict[Path, Run] = {}
    pending = []
    for run in runs:
        if run.run_dir in first:
            continue
        first[run.run_dir] = run
        if is_finished(run) and not force and not changed_settings(run):
            status[run] = "skipped"
        else:
            pending.append(run)
    if executor is None and jobs <= 1:
        with tqdm(pending, desc="runs", unit="run") as progress:
            for run in progress:
                start = time.monotonic()
                status[run] = _outcome(lambda run=run: execute(run), run)
                progress.write(progress_line(run, status[run], time.monotonic() - start))
    else:
        status.update(_run_side_by_side(pending, executor, jobs))
    for run in runs:   # the copies of a shared row report what its one execution did
        status.setdefault(run, status[first[run.run_dir]])
    return status


def start_order(runs: list[Run]) -> list[Run]:
    """`runs` in the order free workers take them up once their inputs are ready: first the runs that
    more of the others wait on (directly or through another run), then the later stages (`STAGES`:
    in the demo a VisCoIN row takes 1.3 to 4 times a G row), then plan order. So both workers stay busy: the G
    that ten rows read starts before the one that only one row reads, and a short run that nothing
    reads fills the gap at the end instead of delaying a long one."""
    readers = {run: [other for other in runs if other is not run and depends_on(other, run)] for run in runs}

    def waiting_on(run: Run, seen: set) -> set:
        for reader in readers[run]:
            if reader not in seen:      # `seen` also stops a cycle (reported later as failed)
                seen.add(reader)
                waiting_on(reader, seen)
        return seen

    def stage(run: Run) -> int:
        return STAGES.index(stage_of(run)) if stage_of(run) in STAGES else -1

    plan_index = {run: i for i, run in enumerate(runs)}
    return sorted(runs, key=lambda run: (-len(waiting_on(run, set())), -stage(run), plan_index[run]))


def _run_side_by_side(pending: list[Run], executor, jobs: int, poll_s: float = 0.5) -> dict[Run, str]:
    status: dict[Run, str] = {}
    pool = None
    if executor is None:
        # Each papermill kernel inherits this: `jobs` kernels share the cores instead of each taking all.
        threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        # Processes, not threads: papermill changes the working directory of the process it runs in.
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    submit, limit = (executor.submit, len(pending)) if executor is not None else (pool.submit, jobs)
    waiting, active, started = start_order(pending), {}, {}
    try:
        with tqdm(total=len(pending), desc="runs", unit="run") as progress:
            while waiting or active:
                for run in list(waiting):
                    unfinished = [other for other in (*waiting, *active) if other is not run]
                    if len(active) < limit and not any(depends_on(run, other) for other in unfinished):
                        waiting.remove(run)
                        active[run] = submit(execute_in_worker, run)
                        started[run] = time.monotonic()
                if not active:   # everything left waits on something else that is left: a cycle
                    for run in waiting:
                        status[run] = "failed: its inputs form a cycle with other rows of this batch"
                    break
                finished = [run for run, job in active.items() if job.done()]
                for run in finished:
                    status[run] = _outcome(active.pop(run).result, run)
                    progress.write(progress_line(run, status[run], time.monotonic() - started[run]))
                    progress.update()
                if not finished:
                    time.sleep(poll_s)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)   # after an interrupt: start nothing new
            if threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = threads
    return status


def progress_line(run: Run, outcome: str, seconds: float) -> str:
    """The line the batch prints as a run ends: 'done' or 'failed', the run (its directory under
    runs/<profile>/) and its wall time; a failure's reason is listed again at the end."""
    root = run.notebook.parents[1]
    try:
        name = run.run_dir.relative_to(root / "runs" / run.params_file.parent.name).as_posix()
    except ValueError:
        name = str(run.run_dir)
    word = "done" if outcome == "done" else "failed"
    return f"{word:<6} {name:<44} {int(seconds) // 60:3d} min {int(seconds) % 60:2d} s"


def is_finished(run: Run) -> bool:
    """Whether the file that marks `run` finished is there (never, for a run that always runs)."""
    return run.finished_by is not None and (run.run_dir / run.finished_by).exists()


def _outcome(call, run: Run) -> str:
    # One failed row must not stop the others: record why and where to look.
    try:
        call()
    except Exception as err:  # noqa: BLE001  (any failure of a notebook is reported, not raised)
        notebook = run.run_dir / f"{run.notebook.stem}.ipynb"
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "error.txt").write_text(traceback.format_exc())
        return f"failed: {reason} (see {notebook})"
    if run.finished_by is not None and not is_finished(run):
        return f"failed: the notebook wrote no {run.finished_by} (see {run.run_dir})"
    return "done"


def run_tables(names: list[str], profile: str, seeds: int | None = None, force: bool = False,
               root: Path | None = None, executor=None, jobs: int = 1,
               figures: bool = False) -> dict[str, tuple[Path, dict]]:
    """Plan every named table, execute all their runs together (a row shared by several tables runs
    once; independent rows side by side with `jobs` > 1 or a submitit `executor`), then tabulate.
    With `figures`, the figures step runs too, as soon as the Table 2 and 3 runs it reads are finished.

    Returns table -> (markdown path, each of its runs' status), and 'figures' -> (their folder, status).
    Table 8 needs no runs.
    """
    root = root or repo_root()
    tables = load_tables(root / "params" / "tables.yaml")
    planned = {name: plan(name, profile, seeds, tables, root) for name in names if name != "table8"}
    problems, _ = preflight_check([run for runs in planned.values() for run in runs], profile, root)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) found before any work (all of them: --check):\n  "
                          + "\n  ".join(problems))
    extra = []
    if figures:
        reads = [run for name in ("table2", "table3") if name in tables
                 for run in plan(name, profile, tables=tables, root=root) if run.seed == 0]
        extra.append(figures_run(profile, reads, root))
    status = run_all([run for runs in planned.values() for run in runs] + extra, force=force, executor=executor,
                     jobs=jobs)
    out_dir = root / "results" / profile
    written = {}
    for name in names:
        command = f"python -m viscoin_core.batch {name} --profile {profile}" + (f" --seeds {seeds}" if seeds else "")
        if name == "table8":
            df = experiments_table(profile, tables, root)
            written[name] = (write_table(df, out_dir, "table8", "Table 8: the experiments and their settings",
                                         table_note(profile, command)), {})
            continue
        runs = planned[name]
        df = build_table(name, profile, runs, status, tables)
        written[name] = (write_table(df, out_dir, name, tables[name]["title"], table_note(profile, command)),
                         {run: status[run] for run in runs})
    if extra:
        written["figures"] = (out_dir / "figures", {run: status[run] for run in extra})
    return written


def run_table(table: str, profile: str, seeds: int | None = None, force: bool = False,
              root: Path | None = None, executor=None, jobs: int = 1) -> tuple[Path, dict]:
    """Plan, execute and tabulate one table; returns the markdown path and each run's status."""
    return run_tables([table], profile, seeds, force, root, executor, jobs)[table]


def run_figures(profile: str, root: Path | None = None) -> Path:
    """Notebook 06 on the profile's Table 3 run: figures into results/<profile>/figures, with G's sample
    sheets and the variants row's figures; the executed notebook is kept in runs/<profile>/figures/."""
    import papermill

    root = root or repo_root()
    run_dir = str(run_directory(profile, "viscoin", "viscoin_cub", 0, root).relative_to(root))
    out_dir = root / "results" / profile / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_figures(out_dir)
    kept = root / "runs" / profile / "figures"
    kept.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(root / "notebooks" / f"{FIGURES_NOTEBOOK}.ipynb"),
                               str(kept / f"{FIGURES_NOTEBOOK}.ipynb"),
                               parameters={"run_dir": run_dir, "params_file": f"params/{profile}/viscoin_cub.yaml",
                                           "out_dir": str(out_dir.relative_to(root))},
                               cwd=str(root / "notebooks"), progress_bar=False, kernel_name="python3",
                               extra_arguments=QUIET_KERNEL)
    generator_figures(profile, out_dir, root)
    variants_figures(profile, out_dir, root)
    return out_dir


def figures_run(profile: str, reads: list[Run], root: Path | None = None) -> Run:
    """The figures step (`run_figures`) as a run of a batch, reading `reads` (Table 2's and Table 3's
    runs: G's samples, Table 3's seed 0, the variants row's figures). In `all` it starts once they
    are finished, beside the NCT rows still running, instead of alone after every row.
    It runs every time: what it draws changes whenever one of those runs does."""
    root = root or repo_root()
    return Run("figures", "figures", root / "notebooks" / f"{FIGURES_NOTEBOOK}.ipynb",
               root / "params" / profile / "viscoin_cub.yaml", {}, root / "runs" / profile / "figures", 0,
               reads=tuple(run.run_dir for run in reads), finished_by=None, call=partial(run_figures, profile, root))


def clear_figures(out_dir: Path) -> list[Path]:
    """Delete the PNG and PDF files in out_dir and out_dir/variants, which the figures step writes
    again: the classes a run's figures show change with the run, and a figure of a class the new run
    does not show would otherwise stay beside them as if it were the new run's. Returns what went."""
    gone = sorted(p for folder in (out_dir, out_dir / "variants") if folder.is_dir()
                  for p in folder.iterdir() if p.is_file() and p.suffix in (".png", ".pdf"))
    for path in gone:
        path.unlink()
    return gone


def variants_figures(profile: str, out_dir: Path, root: Path) -> list[Path]:
    """Copy the per-row figures (PNG) of Table 3's variants row, seed 0, into out_dir/variants/, so the
    reader sees its reconstructions and concept grids beside notebook 06's of the study-settings row."""
    import shutil
    written = []
    for run in plan("table3", profile, root=root):
        source = run.run_dir / "figures"
        if run.params_file.stem != "viscoin_cub_variants" or run.seed != 0 or not source.is_dir():
            continue
        (out_dir / "variants").mkdir(parents=True, exist_ok=True)
        for png in sorted(source.glob("*.png")):
            written.append(Path(shutil.copy2(png, out_dir / "variants" / png.name)))
    return written


def generator_figures(profile: str, out_dir: Path, root: Path) -> list[Path]:
    """g_samples_<row>.png per finished Table 2 row: its training images beside G's last samples."""
    from viscoin_core.viz.training import samples_beside_reals
    written = []
    for run in plan("table2", profile, root=root):
        if (run.run_dir / "reals.png").exists():
            out = out_dir / f"g_samples_{run.params_file.stem}.png"
            samples_beside_reals(run.run_dir, run.label, out=out)
            written.append(out)
    return written


def check_main(names: list[str], profile: str, seeds: int | None, step_times: str | None) -> int:
    """`--check`: print the plan and every problem; 1 when anything is missing, else 0."""
    from viscoin_core.preflight import read_step_times
    root = repo_root()
    runs = [run for name in names if name != "table8" for run in plan(name, profile, seeds, root=root)]
    problems, lines = preflight_check(runs, profile, root, read_step_times(step_times, profile))
    print(f"plan for {' '.join(names)} --profile {profile}:\n  " + "\n  ".join(lines))
    if problems:
        print(f"\n{len(problems)} problem(s):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("\nready: every input is present or made by an earlier row")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help="table1 ... table8, 'all' (Tables 1-8 and the figures), or 'figures' "
                                      "(notebook 06 on finished runs)")
    parser.add_argument("--profile", required=True, choices=PROFILES)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the row's, else 1)")
    parser.add_argument("--force", action="store_true", help="rerun rows that already have metrics.json")
    parser.add_argument("--executor", default="local", choices=["local", "slurm"])
    parser.add_argument("--jobs", type=int, default=1,
                        help="local: rows run side by side, each kernel with cores/jobs threads (default 1)")
    parser.add_argument("--slurm-partition", default=None, help="slurm: partition to submit to")
    parser.add_argument("--slurm-gpus", type=int, default=1, help="slurm: GPUs per row")
    parser.add_argument("--slurm-hours", type=float, default=48.0, help="slurm: time limit per row")
    parser.add_argument("--check", action="store_true",
                        help="check every row's inputs, weights, GPU and disk, print the plan, and stop")
    parser.add_argument("--step-times", default=None, metavar="FILE",
                        help="with --check: `python -m viscoin_core.bench` output, for the plan's hours")
    args = parser.parse_args(argv)
    slurm = {"gpus_per_node": args.slurm_gpus, "timeout_min": int(args.slurm_hours * 60), "cpus_per_task": 8}
    if args.slurm_partition:
        slurm["slurm_partition"] = args.slurm_partition
    if args.table == "figures":
        print(f"figures: {run_figures(args.profile)}")
        return 0
    names = [*NUMBERED_TABLES, "table8"] if args.table == "all" else [args.table]
    if args.check:
        return check_main(names, args.profile, args.seeds, args.step_times)
    executor = make_executor(args.executor, repo_root() / "runs" / args.profile / "slurm", **slurm)
    failed = []
    for name, (path, status) in run_tables(names, args.profile, args.seeds, args.force, executor=executor,
                                           jobs=args.jobs, figures=args.table == "all").items():
        failed += [f"{name}: {r.label} seed {r.seed}: {s}" for r, s in status.items() if s.startswith("failed")]
        print(f"{name}: {path}")
    if failed:
        print("\nFailed runs:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
