"""`python -m viscoin_core.diagnose`: what bounds the reconstructions of a stand-in (or of any data).

    python -m viscoin_core.diagnose --data params/demo/data_toybirds.yaml \\
        --f pretrained/toybirds/f.pt --G pretrained/toybirds/G.pt \\
        [--run "1000 iterations=runs/.../seed0" ...] --out results/demo/reach/toybirds

On `--per-class` test images of every class it scores, with Table 3's reconstruction identification,
G's W+ projection of each image, ridge probes from f's taps to the pixels (`eval.reach`) and the
reconstructions of each VisCoIN run given; it also measures G's precision and recall at a few
truncations. Writes OUT.json (the scores and the command's settings) and OUT.png/.pdf (the first
test image of every class, one row per method), and prints one line per method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def parse_runs(values: list[str]) -> dict[str, Path]:
    """{label: run directory} from 'LABEL=DIR' strings; a bare DIR is labelled by its own name."""
    runs = {}
    for value in values:
        label, _, path = value.rpartition("=")
        runs[label or Path(path).name] = Path(path)
    return runs


def run_reconstructions(run_dir: Path, x: torch.Tensor) -> torch.Tensor:
    """A trained VisCoIN run's reconstructions of x (B, 3, H, W) in [-1, 1]."""
    from viscoin_core.eval import load_system_and_test_split
    system = load_system_and_test_split(run_dir)[0]
    with torch.no_grad():
        return torch.cat([system.reconstruct(*system.concepts(x[s:s + 64])) for s in range(0, len(x), 64)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.diagnose", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True,
                        help="a data parameter file (params/<profile>/data_*.yaml) or a prepared cache directory")
    parser.add_argument("--f", required=True, help="a classifier f.pt at the data's classes")
    parser.add_argument("--G", required=True, help="a generator G.pt (or run directory) at the data's resolution")
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=DIR",
                        help="a VisCoIN run directory on the same data whose reconstructions to score; repeatable")
    parser.add_argument("--out", required=True, help="output path without suffix (OUT.json, OUT.png, OUT.pdf)")
    parser.add_argument("--per-class", type=int, default=10, help="test images per class (default 10)")
    parser.add_argument("--n-train", type=int, default=1200, help="training images the probes are fitted on")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of the W+ projection")
    parser.add_argument("--ridge", type=float, default=100.0, help="ridge penalty of the probes (> 0)")
    parser.add_argument("--truncation", type=float, nargs="*", default=[1.0, 0.7, 0.5], metavar="PSI",
                        help="G's precision and recall at these truncations, against --n-train training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, low in (("per_class", 2), ("n_train", 2), ("steps", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.ridge <= 0:
        parser.error(f"--ridge must be > 0, got {args.ridge}")
    if any(not 0 <= psi <= 1 for psi in args.truncation):
        parser.error(f"--truncation values must lie in [0, 1], got {args.truncation}")

    from viscoin_core.config import resolve_path
    from viscoin_core.data import load_split
    from viscoin_core.data.prepare import ensure_prepared
    from viscoin_core.eval import reach
    from viscoin_core.model import load_generator_file
    from viscoin_core.nets.classifier import load_classifier
    from viscoin_core.runs import json_ready, write_json_atomic
    from viscoin_core.viz.figures import image_rows

    runs = parse_runs(args.run)
    for label, path in runs.items():
        if not resolve_path(path).is_dir():
            parser.error(f"--run {label}={path}: no such run directory")
    data = resolve_path(args.data)
    cache_dir = data if data.is_dir() else ensure_prepared(str(data))
    train, test = load_split(cache_dir, "train"), load_split(cache_dir, "test")
    f = load_classifier(resolve_path(args.f)).float()
    G = load_generator_file(args.G).float()
    if f.n_classes != test.n_classes:
        parser.error(f"--f {args.f} has {f.n_classes} classes, the data {test.n_classes}")

    torch.manual_seed(args.seed)
    chosen = reach.per_class(test.labels, args.per_class)
    x = torch.stack([test[i][0] for i in chosen])                    # (N, 3, H, W)
    labels = test.labels[chosen]
    fit = torch.randperm(len(train))[:args.n_train].tolist()
    x_train = torch.stack([train[i][0] for i in fit])
    result = reach.reach(G, f, x_train, x, labels, steps=args.steps, ridge=args.ridge)
    images = {"input": x, **result.pop("images")}
    for label, path in runs.items():
        rec = run_reconstructions(resolve_path(path), x)
        result[f"viscoin: {label}"] = reach.scored(rec, x, labels)
        images[f"viscoin: {label}"] = rec

    samples = reach.truncated_precision_recall(G, f, x_train, args.truncation, seed=args.seed) if args.truncation else {}
    record = {"command": "python -m viscoin_core.diagnose " + " ".join(argv if argv is not None else sys.argv[1:]),
              "data": args.data, "f": args.f, "G": args.G, "runs": {k: str(v) for k, v in runs.items()},
              "n_test": len(x), "per_class": args.per_class, "seed": args.seed, "scores": result,
              "samples_by_truncation": samples}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_name(out.name + ".json"), json_ready(record))
    first = reach.per_class(labels, 1)                                # one column per class
    image_rows({k: v[first] for k, v in images.items()},
               [test.class_names[int(labels[j])][:12] for j in first], out=out)
    for method, score in result.items():
        print(f"{method:>28}: identification in class {score['identification_in_class']:5.1f}% "
              f"(chance {score['identification_in_class_chance']:.1f}%), MSE {score['mse']:.4f}")
    for psi, pr in samples.items():
        print(f"{'G samples, psi ' + psi:>28}: precision {pr['precision']:.3f}, recall {pr['recall']:.3f}")
    print(f"wrote {out}.json and {out}.png")
    return 0


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
