"""One measurement of ./README.md: a demo VisCoIN row on the pretrained stand-ins, then its evaluation.

    OMP_NUM_THREADS=1 python results/demo/budget/run.py TRUNK SEED RUN_DIR [FG [PARAMS [ITERATIONS]]]

TRUNK: the random LPIPS network's trunk, 'vgg' (what every profile's `lpips_backbone: random` is)
or 'alex' / 'squeeze' (the lpips package's other two trunks, drawn from seed 0 the same way; not an
option of the project: this script swaps the network in, and the run's config.json still says
`random`). FG 'pretrained' (default): f and G are pretrained/<stand-in>/{f,G}.pt, not the demo's
fine-tuned ones. PARAMS defaults to params/demo/viscoin_cub_variants.yaml. EXTRA (environment, a
JSON object) overrides more config keys. Prints one JSON line: training seconds and the metrics.
"""
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from viscoin_core.eval import evaluate  # noqa: E402
from viscoin_core.eval import metrics as M  # noqa: E402
from viscoin_core.model import as_config  # noqa: E402
from viscoin_core.train.viscoin import train_viscoin  # noqa: E402


def random_trunk(net: str):
    """The lpips package's LPIPS with a randomly initialised `net` trunk, drawn from seed 0."""
    import lpips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return lpips.LPIPS(net=net, pnet_rand=True, verbose=False)


def main():
    torch.set_num_threads(1)
    net, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fg = sys.argv[4] if len(sys.argv) > 4 else "pretrained"
    params = sys.argv[5] if len(sys.argv) > 5 else "params/demo/viscoin_cub_variants.yaml"
    if net != "vgg":
        M._random_lpips = lambda: random_trunk(net)
    overrides = {"seed": seed}
    if fg == "pretrained":
        stand_in = "toybirds" if "cub" in params else "toytissue"
        overrides.update(f=f"pretrained/{stand_in}/f.pt", G=f"pretrained/{stand_in}/G.pt")
    if len(sys.argv) > 6:
        overrides["iterations"] = int(sys.argv[6])
    overrides.update(json.loads(os.environ.get("EXTRA", "{}")))
    cfg = dataclasses.replace(as_config(params), **overrides)
    start = time.perf_counter()
    train_viscoin(cfg, out)
    train_s = time.perf_counter() - start
    m = evaluate(out)
    loc = m.get("concept_localisation", {})
    print(json.dumps({"net": net, "seed": seed, "train_s": round(train_s, 1), "g": m["g_accuracy"],
                      "f": m["f_accuracy"], "id": m["identification_in_class"], "loc": loc.get("mean"),
                      "loc0": loc.get("untrained_mean"), "mse": m["mse"]}))


if __name__ == "__main__":
    main()
