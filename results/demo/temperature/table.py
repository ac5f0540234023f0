"""Print the table of results/demo/temperature/README.md from the runs' own files.

    python results/demo/temperature/table.py

For each run folder: what its config changes from params/demo/viscoin_cub.yaml (with f and G the
pretrained stand-ins, or the demo's own for the demo_* runs), g's accuracy, identification in class
and MSE at the run's last iteration (300; 200 for the toytissue n_* runs; the demo_* runs and the
others name theirs) on the training's 64 test images, and,
where `python -m viscoin_core.eval` ran on 128 test images, the same with concept localisation (an
untrained Psi's in brackets).
"""
import json
from pathlib import Path

from viscoin_core.config import load_config, resolve_path, to_dict
from viscoin_core.model import ViscoinConfig
from viscoin_core.runs import changed_keys

HERE = Path(__file__).parent
IGNORED = {"f", "G", "eval_every", "checkpoint_every", "iterations", "data"}


def changed(config: dict, base: dict) -> str:
    # a key missing from an older run's config did not exist then: that run had its default, the paper's
    keys = [k for k in changed_keys(base, config) if k in config and k not in IGNORED]
    return ", ".join(f"{k} {config[k]}" for k in keys) or "none (the study's settings)"


def main():
    base = to_dict(load_config(ViscoinConfig, resolve_path("params/demo/viscoin_cub.yaml")))
    print("| run | changed | g, 64 | identification, 64 (chance 18.75) | MSE, 64 "
          "| g, 128 | identification, 128 (chance 9.4) | localisation (untrained Psi) |")
    print("|---|---|---|---|---|---|---|---|")
    for run in sorted(p for p in (HERE / "trained").iterdir() if p.is_dir()):
        config = json.loads((run / "config.json").read_text())["config"]
        tests = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        last = [r for r in tests if r["split"] == "test"][-1]
        cells = [run.name, changed(config, base), f"{last['g_accuracy']:.1f}",
                 f"{last['identification_in_class']:.1f}", f"{last['mse']:.3f}"]
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
        if "concept_localisation" in metrics:
            loc = metrics["concept_localisation"]
            cells += [f"{metrics['g_accuracy']:.1f}", f"{metrics['identification_in_class']:.1f}",
                      f"{loc['mean']:.2f} ({loc['untrained_mean']:.2f})"]
        else:
            cells += ["", "", ""]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
