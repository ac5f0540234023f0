"""Side measurement: the size of each loss term's gradient on the parameters VisCoIN trains.

Adam scales every parameter's step by the running size of its whole gradient, so a term whose
gradient is far larger than the others' sets the step size and leaves the others a small share.
This prints, for each term of `losses.viscoin_loss`, the L2 norm of its (weighted) gradient on four
parameter groups, averaged over a few batches of 8 training + 8 synthetic images.

    python results/demo/temperature/gradients.py PARAMS F G [CHECKPOINT] [--set KEY=VALUE ...]

PARAMS is a VisCoIN parameter file, F and G the frozen networks, CHECKPOINT a run's checkpoint.pt
(default: the parts at their initialisation). Runs in float32 on the CPU.
"""
import argparse

import torch

from viscoin_core.config import load_config, parse_overrides
from viscoin_core.eval.metrics import build_lpips
from viscoin_core.model import ViscoinConfig, build_f, build_G, build_parts, load_data
from viscoin_core.train.viscoin import Trainer, synthetic_z

BATCHES = 4


def parameter_groups(psi, omega):
    return {"Psi trunk": [p for n, p in psi.named_parameters() if n.startswith(("from_", "fuse"))],
            "Psi concepts": list(psi.to_concepts.parameters()),
            "Psi prime": list(psi.prime1.parameters()) + list(psi.prime2.parameters()),
            "Omega": list(omega.parameters())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params")
    parser.add_argument("f")
    parser.add_argument("G")
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.manual_seed(0)   # augmentation and G's noise draw from the global RNG: the same batches every run
    cfg = load_config(ViscoinConfig, args.params, f=args.f, G=args.G, amp="off", **parse_overrides(args.set))
    train_set, _, _ = load_data(cfg)
    f, G = build_f(cfg, train_set.n_classes), build_G(cfg, train_set.resolution)
    parts = build_parts(cfg, f, G, train_set.n_classes)
    if args.checkpoint:
        state = torch.load(args.checkpoint, weights_only=True)
        for name, module in parts.items():
            module.load_state_dict(state[name])
    trainer = Trainer(cfg, f, G, parts, build_lpips(cfg.lpips_backbone), torch.device("cpu"))
    groups = parameter_groups(trainer.psi, trainer.omega)
    gen = torch.Generator().manual_seed(0)
    norms: dict[str, list[list[float]]] = {}
    for b in range(BATCHES):
        index = torch.randint(len(train_set), (cfg.batch_real,), generator=gen).tolist()
        x = torch.stack([train_set[i][0] for i in index])
        x = torch.cat([x, trainer.sample_fake(synthetic_z(cfg, 10_000 + b, G.z_dim))])
        _, terms, _ = trainer.loss(x, iteration=cfg.loss_warmup)
        terms = {"rec_l2 + rec_l1": terms.pop("rec_l2") + terms.pop("rec_l1"), **terms}
        for name, value in terms.items():
            row = []
            for params_of_group in groups.values():
                grads = torch.autograd.grad(value, params_of_group, retain_graph=True, allow_unused=True)
                row.append(sum(float(g.square().sum()) for g in grads if g is not None) ** 0.5)
            norms.setdefault(name, []).append(row)
    print("| term | " + " | ".join(groups) + " |")
    print("|---" * (len(groups) + 1) + "|")
    for name, rows in norms.items():
        mean = torch.tensor(rows).mean(0).tolist()
        print(f"| {name} | " + " | ".join(f"{v:.3g}" for v in mean) + " |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
