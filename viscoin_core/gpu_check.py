"""`make gpu-check`: what a machine lent a GPU should run first, unchanged, within 10 minutes.

    python -m viscoin_core.gpu_check [--size paper|smoke] [--out runs/gpu_check]

1. Prints the device.
2. On CUDA, times the paper-size steps (VisCoIN, G and D, f) with the precision the paper profile
   uses there (`amp: auto`, i.e. bf16 autocast for VisCoIN), one JSON line each (`bench`).
3. Runs the rehearsal's Table 3 row (256 px, ResNet-50 f and paper256 G from the rehearsal's
   Table 1 and 2 rows, K = 256) on the CPU and, when there is one, on CUDA, from the same seed in
   float32 (`amp: off`, TF32 off), and compares their numbers: every loss term of every logged
   iteration and the final evaluation's MSE and LPIPS within a relative 1e-3, and accuracies within
   one image. Without a GPU it says so and runs the CPU half.
`--size smoke` does step 3 on the smoke row (tiny random f and G) in seconds, for the tests.
Writes `report.json` in `--out`; exits 1 when CPU and CUDA disagree.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from viscoin_core.config import load_config, repo_root

RELATIVE_TOLERANCE = 1e-3
ROWS = {"paper": "params/rehearsal/viscoin_cub.yaml", "smoke": "params/smoke/viscoin.yaml"}
COMPARED = ("mse", "lpips")          # final evaluation values held to the relative tolerance
COUNTED = ("f_accuracy", "g_accuracy", "fidelity")   # percentages of n images: within one image


def cuda_available() -> bool:
    return torch.cuda.is_available()


def describe_device() -> str:
    if not cuda_available():
        return f"no CUDA device (torch {torch.__version__}): running the CPU half only"
    props = torch.cuda.get_device_properties(0)
    return (f"CUDA device 0: {props.name}, {props.total_memory / 2**30:.0f} GiB, capability "
            f"{props.major}.{props.minor}; torch {torch.__version__}, CUDA {torch.version.cuda}")


def time_paper_steps() -> None:
    """bench's paper-size steps on CUDA, each printing one JSON line."""
    from viscoin_core import bench
    for name in ("viscoin", "gan", "classifier"):
        bench.main([name, "--size", "paper", "--device", "cuda", "--steps", "5"])


def make_rehearsal_inputs(device: str) -> None:
    """The rehearsal's trees, pickles, and its Table 1 and 2 CUB rows (f and G of the Table 3 row)."""
    from viscoin_core import rehearsal
    from viscoin_core.train.classifier import ClassifierConfig, train_classifier
    from viscoin_core.train.gan import GanConfig, train_gan
    rehearsal.make_inputs()
    root = repo_root()
    train_classifier(load_config(ClassifierConfig, root / "params/rehearsal/classifier_cub.yaml", device=device),
                     root / "runs/rehearsal/f/classifier_cub/seed0")
    train_gan(load_config(GanConfig, root / "params/rehearsal/gan_cub.yaml", device=device),
              root / "runs/rehearsal/g/gan_cub/seed0")


def run_row(params_file: str, device: str, run_dir: Path) -> dict:
    """The row trained and evaluated on `device` in float32: its log records and final metrics."""
    from viscoin_core.model import ViscoinConfig
    from viscoin_core.runs import read_jsonl
    from viscoin_core.train.viscoin import train_viscoin
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = load_config(ViscoinConfig, repo_root() / params_file, device=device, amp="off")
    metrics = train_viscoin(cfg, run_dir)
    return {"metrics": metrics, "log": read_jsonl(run_dir / "log.jsonl")}


def compare_records(a: dict, b: dict, where: str) -> list[str]:
    """Disagreements between two records of the same step: percentages of n images may differ by
    one image, every other number by the relative tolerance; timings are not compared."""
    problems = []
    one_image = 100.0 / max(int(a.get("n_images", 1)), 1)
    for key, value in a.items():
        if key in ("iteration", "seconds_per_iteration", "seconds") or not isinstance(value, (int, float)):
            continue
        other = b.get(key)
        counted = key in COUNTED or key.startswith("identification")
        if other is None or (abs(value - other) > one_image + 1e-9 if counted else not close(value, other)):
            problems.append(f"{where}: {key} {value:.6g} on CPU, {other} on CUDA")
    return problems


def compare(cpu: dict, cuda: dict) -> list[str]:
    """Every disagreement between the CPU and CUDA runs of one row beyond the stated tolerance."""
    if len(cpu["log"]) != len(cuda["log"]):
        return [f"the logs differ in length: {len(cpu['log'])} records on CPU, {len(cuda['log'])} on CUDA"]
    problems = []
    for a, b in zip(cpu["log"], cuda["log"]):
        problems += compare_records(a, b, f"iteration {a.get('iteration')} ({a.get('split')})")
    keep = lambda m: {**{k: v for k, v in m.items() if k in COMPARED + COUNTED},   # noqa: E731
                      "n_images": m.get("n_test_images", 1)}
    return problems + compare_records(keep(cpu["metrics"]), keep(cuda["metrics"]), "final evaluation")


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="paper", choices=sorted(ROWS))
    parser.add_argument("--out", default="runs/gpu_check", help="where the two runs and report.json go")
    args = parser.parse_args(argv)
    out = Path(args.out) if Path(args.out).is_absolute() else repo_root() / args.out
    cuda = cuda_available()
    print(describe_device(), flush=True)
    if cuda and args.size == "paper":
        time_paper_steps()
    if args.size == "paper":
        make_rehearsal_inputs("cuda" if cuda else "cpu")
    report = {"device": describe_device(), "row": ROWS[args.size], "tolerance": {
        "relative": RELATIVE_TOLERANCE, "accuracies": "one image"}}
    report["cpu"] = run_row(ROWS[args.size], "cpu", out / args.size / "cpu")
    problems = []
    if cuda:
        report["cuda"] = run_row(ROWS[args.size], "cuda", out / args.size / "cuda")
        problems = compare(report["cpu"], report["cuda"])
    report["problems"] = problems
    out.mkdir(parents=True, exist_ok=True)
    (out / f"report_{args.size}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    final = report["cpu"]["metrics"]
    print(f"CPU: g {final.get('g_accuracy')}%, mse {final.get('mse'):.4f}, lpips {final.get('lpips'):.4f}")
    if not cuda:
        print(f"CPU half done; the CUDA comparison needs a GPU. Report: {out / f'report_{args.size}.json'}")
        return 0
    if problems:
        print("CPU and CUDA disagree:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"CPU and CUDA agree within a relative {RELATIVE_TOLERANCE} and one image on accuracies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
