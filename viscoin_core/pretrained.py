"""The stand-ins' pretrained networks: `make pretrained` (= `python -m viscoin_core.pretrained`).

The study fine-tunes f from ImageNet weights and G from an FFHQ StyleGAN2. Neither exists for
toybirds and toytissue, so this trains, once and with the project's own trainers, a classifier and
a generator (with its discriminator) per stand-in, on a draw of it that no profile uses
(`params/pretrained/data_*.yaml`, seed 1). The demo and mini rows then fine-tune from them.

Each network trains in runs/pretrained/<stage>/<params stem>/seed0, and each trainer resumes there
after an interruption. Then the weights are exported in float16 to pretrained/<stand-in>/{f,G,D}.pt,
in the formats `nets.classifier.load_classifier` and `nets.stylegan2.load_network` read
(weights only). pretrained/MANIFEST.json says how each file was made: command, commit, epochs or
kimg, metrics, size and sha256; pretrained/<stand-in>/samples.png shows the G's samples beside
its training images.

    python -m viscoin_core.pretrained [--stand-in toybirds] [--train-only | --export-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


from viscoin_core import runs
from viscoin_core.config import ConfigError, load_config, repo_root

STAND_INS = ("toybirds", "toytissue")
OUT_DIR = runs.PRETRAINED_DIR          # relative to the repository root; committed
MANIFEST = "MANIFEST.json"
BUDGET_BYTES = 25 * 10**6               # all of pretrained/ stays small enough for git
COMMAND = "make pretrained"


def params_file(stand_in: str, stage: str) -> Path:
    """params/pretrained/{classifier,gan}_<stand-in>.yaml."""
    return repo_root() / "params" / "pretrained" / f"{'classifier' if stage == 'f' else 'gan'}_{stand_in}.yaml"


def run_dir(stand_in: str, stage: str) -> Path:
    """Where the network of `stage` ('f' or 'g') of `stand_in` trains."""
    return runs.run_directory("pretrained", stage, params_file(stand_in, stage).stem, 0)


def train(stand_in: str, stage: str) -> dict:
    """Train (or resume, or find finished) one network; returns its metrics.json."""
    from viscoin_core.train.classifier import ClassifierConfig, train_classifier
    from viscoin_core.train.gan import GanConfig, train_gan
    out = run_dir(stand_in, stage)
    cls, fn = (ClassifierConfig, train_classifier) if stage == "f" else (GanConfig, train_gan)
    return fn(load_config(cls, params_file(stand_in, stage)), out)


def half(state: dict) -> dict:
    """A state dict with its floating-point tensors in float16 (integers, e.g. BatchNorm counts, kept)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def export_file(source: Path, target: Path) -> None:
    """Copy a classifier or native StyleGAN2 checkpoint with its weights in float16."""
    record = runs.load_torch(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    runs.save_atomic({**record, "state_dict": half(record["state_dict"])}, target, finite=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(stand_in: str) -> dict:
    """pretrained/<stand-in>/{f,G,D}.pt from finished runs; returns their manifest entries."""
    out = repo_root() / OUT_DIR / stand_in
    entries = {}
    for stage, names in (("f", ("f.pt",)), ("g", ("G.pt", "D.pt"))):
        source_dir = run_dir(stand_in, stage)
        metrics = runs.read_metrics(source_dir)
        if metrics is None:
            raise FileNotFoundError(f"{source_dir} has no metrics.json: train it first ({COMMAND})")
        config = json.loads((source_dir / "config.json").read_text())
        for name in names:
            target = out / name
            export_file(source_dir / name, target)
            entries[f"{stand_in}/{name}"] = {
                "bytes": target.stat().st_size, "sha256": sha256(target), "dtype": "float16",
                "made_by": f"{COMMAND} (python -m viscoin_core.pretrained --stand-in {stand_in})",
                "params": str(params_file(stand_in, stage).relative_to(repo_root())),
                "commit": config.get("git_commit") or runs.git_commit(), "run_dir": str(source_dir.relative_to(repo_root())),
                **({"resumed_at_commits": config["resumed_at_commits"]} if config.get("resumed_at_commits") else {}),
                "budget": {"epochs": metrics.get("epochs")} if stage == "f" else {"kimg": metrics.get("kimg")},
                "metrics": summary_metrics(stage, metrics)}
    from viscoin_core.viz.training import samples_beside_reals
    samples_beside_reals(run_dir(stand_in, "g"), f"{stand_in}: the pretrained G", out=out / "samples.png")
    return entries


def summary_metrics(stage: str, metrics: dict) -> dict:
    """What the manifest keeps of a run's metrics.json."""
    keys = (("test_accuracy", "best_epoch") if stage == "f"
            else ("fid", "kid", "precision", "recall", "fid_features", "fid_start", "kimg_per_hour"))
    return {k: metrics.get(k) for k in keys}


def write_manifest(entries: dict) -> Path:
    """Merge `entries` into pretrained/MANIFEST.json and check the directory's size budget (every
    file in it: weights, sample sheets, the manifest)."""
    path = repo_root() / OUT_DIR / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update(entries)
    on_disk = sum(p.stat().st_size for p in path.parent.rglob("*") if p.is_file() and p != path)
    total = max(on_disk, sum(e["bytes"] for e in manifest.values()))
    if total > BUDGET_BYTES:
        raise ConfigError(f"{path.parent}: {total / 1e6:.1f} MB, over the {BUDGET_BYTES / 1e6:.0f} MB budget")
    runs.write_bytes_atomic(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.pretrained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stand-in", choices=STAND_INS, action="append",
                        help="only this stand-in (repeatable; default: both)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--export-only", action="store_true", help="export finished runs, train nothing")
    which.add_argument("--train-only", action="store_true",
                       help="train, export nothing (make pretrained trains the stand-ins side by side, then exports)")
    args = parser.parse_args(argv)
    for stand_in in args.stand_in or STAND_INS:
        if not args.export_only:
            for stage in ("f", "g"):   # G's FID reads the stand-in's f
                train(stand_in, stage)
        if args.train_only:
            continue
        path = write_manifest(export(stand_in))
        print(f"{stand_in}: {OUT_DIR}/{stand_in}/f.pt, G.pt, D.pt ({path.relative_to(repo_root())})")
    return 0


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
