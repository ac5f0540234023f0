"""Print the table of ./README.md from the runs' own files: python results/demo/budget/table.py"""
import json
from pathlib import Path

HERE = Path(__file__).parent


def main():
    print("| run | LPIPS trunk | iterations | f_temperature | fuse_at | training s (1 thread) | f | g | identification in class "
          "(chance) | localisation (untrained Psi) | MSE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in sorted(p for p in (HERE / "runs").iterdir() if p.is_dir()):
        result = json.loads((run / "result.json").read_text())
        config = json.loads((run / "config.json").read_text())["config"]
        metrics = json.loads((run / "metrics.json").read_text())
        loc = metrics.get("concept_localisation", {})
        print(f"| {run.name} | {result['net']} | {config['iterations']} | {config['f_temperature']:g} | {config['fuse_at']} | "
              f"{result['train_s']:.0f} | {metrics['f_accuracy']:.1f} | {metrics['g_accuracy']:.1f} | "
              f"{metrics['identification_in_class']:.1f} ({metrics['identification_in_class_chance']:.1f}) | "
              f"{loc['mean']:.2f} ({loc['untrained_mean']:.2f}) | {metrics['mse']:.3f} |")


if __name__ == "__main__":
    main()
