"""`python -m viscoin_core.eval --run-dir DIR [--n-images N ...]`: evaluate a trained run into its metrics.json."""

from __future__ import annotations

import argparse
import json
import sys

from viscoin_core.eval import evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.eval", description=__doc__)
    parser.add_argument("--run-dir", required=True, help="a VisCoIN run directory (holds viscoin.pt or a checkpoint)")
    parser.add_argument("--n-images", type=int, default=None, help="test images to evaluate (default: the run's eval_images; all when unset)")
    parser.add_argument("--n-train-images", type=int, default=None,
                        help="training images searched by consistency (default: --n-images)")
    parser.add_argument("--faithfulness-images", type=int, default=None,
                        help="default: the run's faithfulness_images")
    parser.add_argument("--consistency-samples", type=int, default=None,
                        help="default: the run's consistency_samples")
    parser.add_argument("--consistency-concepts", type=int, default=None,
                        help="evaluate consistency on this many random eligible concepts (default: the run's consistency_concepts; all when unset)")
    parser.add_argument("--localisation-images", type=int, default=None,
                        help="test images concept localisation edits (default: the run's localisation_images)")
    parser.add_argument("--fid-features", choices=["inception", "classifier"], default=None,
                        help="default: the run's config")
    parser.add_argument("--lpips-backbone", choices=["vgg", "random"], default=None, help="default: the run's config")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("n_images", "n_train_images", "faithfulness_images", "consistency_samples",
                 "consistency_concepts", "localisation_images", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    from viscoin_core.runs import json_ready, pick_device
    result = evaluate(args.run_dir, n_images=args.n_images, device=str(pick_device(args.device)),
                      batch_size=args.batch_size, seed=args.seed, fid_features=args.fid_features,
                      lpips_backbone=args.lpips_backbone, n_train_images=args.n_train_images,
                      faithfulness_images=args.faithfulness_images, consistency_samples=args.consistency_samples,
                      consistency_concepts=args.consistency_concepts,
                      localisation_images=args.localisation_images)
    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}
    summary["consistency"] = {k: result["consistency"][k] for k in ("mean", "std", "n_concepts")}
    summary["faithfulness"] = result["faithfulness"]
    print(json.dumps(json_ready(summary), indent=2))
    return 0


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
