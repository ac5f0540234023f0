"""Side measurement: how much of each planted factor, and of the pixels, can a linear map read from
f's taps, from Phi', from Phi and from Omega's style vectors? Ridge regression fitted on the train
split, R^2 on the test split (1 = all of it, 0 = none).

    python results/mini/side/probe.py RUN_DIR [N_TRAIN N_TEST]
"""
import sys

import torch

from viscoin_core.data import load_split
from viscoin_core.eval.reach import ridge_fit
from viscoin_core.model import load_data, load_viscoin

torch.set_num_threads(1)
FACTORS = ("position_x", "position_y", "scale", "facing", "clutter", "belly_red", "wing_striped")


def features(system, dataset, n):
    """{name: (n, D) float64} over n evenly spaced images of `dataset`."""
    index = torch.linspace(0, len(dataset) - 1, n).long().tolist()
    out = {k: [] for k in ("taps", "phi_prime", "phi", "ws", "pixels", "factors")}
    with torch.no_grad():
        for start in range(0, n, 64):
            batch = index[start:start + 64]
            x = torch.stack([dataset[i][0] for i in batch])
            _, taps = system["f"].forward_taps(x)
            phi, phi_prime = system["psi"](taps)
            out["taps"].append(torch.cat([t.mean((2, 3)) for t in taps.values()], 1))   # pooled: no layout
            out["phi_prime"].append(phi_prime)
            out["phi"].append(phi.flatten(1))
            out["ws"].append(system["omega"](phi, phi_prime).flatten(1))
            out["pixels"].append(x.flatten(1))
            out["factors"].append(dataset.factors[batch].float())
    return {k: torch.cat(v).double() for k, v in out.items()}


def ridge_r2(train, test, source, target, lam=0.01):
    mu, sd = train[source].mean(0), train[source].std(0) + 1e-6
    weights, intercept = ridge_fit((train[source] - mu) / sd, train[target], lam * len(train[source]))
    Yt = test[target]
    return 1 - (((test[source] - mu) / sd @ weights + intercept - Yt) ** 2).sum(0) / ((Yt - Yt.mean(0)) ** 2).sum(0)


if __name__ == "__main__":
    run = sys.argv[1]
    n_train, n_test = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (2400, 1200)
    system = load_viscoin(run)
    _, _, cache = load_data(system["config"])
    train_split, test_split = load_split(cache, "train"), load_split(cache, "test")
    train, test = features(system, train_split, n_train), features(system, test_split, n_test)
    names = list(test_split.factor_names)
    print(f"{run}: R^2 on {n_test} test images (ridge fitted on {n_train} train images)")
    print(f"{'read from':10s} {'dim':>5s} {'pixels':>7s} " + " ".join(f"{n:>12s}" for n in FACTORS))
    for source in ("taps", "phi_prime", "phi", "ws"):
        r2 = ridge_r2(train, test, source, "factors")
        pixels = ridge_r2(train, test, source, "pixels").mean()
        print(f"{source:10s} {train[source].shape[1]:5d} {pixels:7.2f} " +
              " ".join(f"{r2[names.index(n)]:12.2f}" for n in FACTORS))
