"""Omega's lr multiplier and latent regression on the demo's Table 3 row, with random f and G.

    OMP_NUM_THREADS=1 nice -n 19 python results/demo/omega_latreg/measure.py NAME [NAME ...]

NAME is a key of RUNS. Each run is params/demo/viscoin_cub.yaml with f and G random (the demo's
ResNet-18 and its G settings from params/demo/gan_cub.yaml: w_dim 64, channel_base 2048, channel_max
64, 2 mapping layers), ITERATIONS iterations, run in /tmp/omega_latreg/NAME. It prints one JSON line:
how far Psi's and Omega's effective weights moved from their initialisation (relative Frobenius
norm, in total and per iteration on average), the last logged training loss terms, the final
evaluation on FINAL_IMAGES test images, and the latent regression error of the trained model on
64 fresh synthetic samples (w and style-mixed w+), whether or not it was trained with it, beside
the error of predicting G's w_avg for every sample.

results.jsonl holds the four runs of docs/DISCREPANCIES.md. Their `*_last5` and
`regression_error_constant_*` fields were added after the runs, from the same runs' logs and
networks, by `last_losses` and `constant`, which the script has called since.
"""

import json
import os
import sys

import torch

from viscoin_core import model
from viscoin_core.config import read_params, resolve_path, to_dict
from viscoin_core.losses import latent_regression
from viscoin_core.runs import read_jsonl
from viscoin_core.train import viscoin as V

ITERATIONS = int(os.environ.get("MEASURE_ITERATIONS", 200))   # fewer only to try the script out
DATA = os.environ.get("MEASURE_DATA", "params/demo/data_toybirds.yaml")
FINAL_IMAGES = 256
RUNS = {
    "paper": {},                                        # omega_lr_multiplier 0.01, no latent regression
    "omega_lr_1": {"omega_lr_multiplier": 1.0},
    "latreg_wplus": {"latent_regression_weight": 1.0, "latent_regression_space": "w+"},
    "latreg_wplus_omega_lr_1": {"latent_regression_weight": 1.0, "latent_regression_space": "w+",
                                "omega_lr_multiplier": 1.0},
}


def config(name: str) -> model.ViscoinConfig:
    params = read_params(resolve_path("params/demo/viscoin_cub.yaml"))
    gan = read_params(resolve_path("params/demo/gan_cub.yaml"))
    params.update(f="random", G="random", f_arch=read_params(resolve_path("params/demo/classifier_cub.yaml"))["arch"],
                  g_w_dim=gan["w_dim"], g_channel_base=gan["channel_base"], g_channel_max=gan["channel_max"],
                  iterations=ITERATIONS, eval_every=10 * ITERATIONS, checkpoint_every=10 * ITERATIONS,
                  final_eval_images=FINAL_IMAGES, device="cpu", data=DATA, **RUNS[name])
    assert gan["mapping_layers"] == 2 and gan["arch"] == "small"   # what the random G is built with
    return model.as_config(params)


def effective(omega) -> torch.Tensor:
    return torch.cat([(omega.weight * omega.weight_gain).flatten(), (omega.bias * omega.lr_multiplier).flatten()]).detach()


def relative_move(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


@torch.no_grad()
def regression_error(system: dict, cfg: model.ViscoinConfig, space: str) -> float:
    """MSE between Omega's style vectors for 64 fresh samples G(w) and their w (w+: style-mixed, as
    the trainer mixes them), drawn from the seed after the run's."""
    probe = model.as_config({**to_dict(cfg), "batch_fake": 64, "latent_regression_weight": 1.0,
                             "latent_regression_space": space, "seed": cfg.seed + 1})
    f, G, psi, omega = system["f"], system["G"], system["psi"], system["omega"]
    ws = G.mapping(V.synthetic_z(probe, 0, G.z_dim), None)
    mix = V.synthetic_mix(probe, 0, G.z_dim, G.num_ws)
    if mix is not None:
        later = torch.arange(G.num_ws)[None, :] >= mix[1][:, None]
        ws = torch.where(later[:, :, None], G.mapping(mix[0], None), ws)
    _, taps = f.forward_taps(G.synthesis(ws, noise_mode="const"))
    return float(latent_regression(omega(*psi(taps)), ws))


def last_losses(train: list[dict], n: int = 5) -> dict:
    """Mean of the last n training records (one batch each): the total without the latent term, and that term."""
    last = train[-n:]
    latent = sum(r.get("latent_regression", 0.0) for r in last) / len(last)
    return {"loss_without_latent_last5": sum(r["total"] for r in last) / len(last) - latent,
            "latent_regression_last5": latent}


def constant(G):
    """An 'Omega' that predicts G's w_avg for every style vector, whatever the concepts."""
    return lambda phi, phi_prime: G.mapping.w_avg.expand(phi.shape[0], G.num_ws, G.w_dim)


def measure(name: str) -> dict:
    torch.set_num_threads(1)
    cfg = config(name)
    run_dir = f"/tmp/omega_latreg/{name}_{ITERATIONS}"
    metrics = V.train_viscoin(cfg, run_dir)
    system = model.load_viscoin(run_dir)
    f, G = system["f"], system["G"]
    init = model.build_parts(cfg, f, G, system["theta"].linear.out_features)   # the same seed: the initial parts
    omega_move = relative_move(effective(init["omega"]), effective(system["omega"]))
    psi_before = torch.cat([p.detach().flatten() for p in init["psi"].parameters()])
    psi_after = torch.cat([p.flatten() for p in system["psi"].parameters()])
    train = [r for r in read_jsonl(f"{run_dir}/log.jsonl") if r["split"] == "train"]
    return {"run": name, "iterations": cfg.iterations, "lr": cfg.lr, "omega_lr_multiplier": cfg.omega_lr_multiplier,
            "latent_regression_weight": cfg.latent_regression_weight,
            "omega_relative_move": omega_move, "omega_relative_move_per_iteration": omega_move / cfg.iterations,
            "psi_relative_move": relative_move(psi_before, psi_after),
            "last_train_log": {k: v for k, v in train[-1].items() if k not in ("split", "lr")},
            **last_losses(train),
            "final_eval": {k: metrics[k] for k in ("f_accuracy", "g_accuracy", "fidelity", "mse", "lpips")},
            "regression_error_w": regression_error(system, cfg, "w"),
            "regression_error_wplus": regression_error(system, cfg, "w+"),
            # the same samples, predicted by G's w_avg for every style vector: what a constant achieves
            "regression_error_constant_w": regression_error({**system, "omega": constant(G)}, cfg, "w"),
            "regression_error_constant_wplus": regression_error({**system, "omega": constant(G)}, cfg, "w+"),
            "seconds_per_iteration": sum(r["seconds_per_iteration"] for r in train) / len(train)}


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(json.dumps(measure(name)), flush=True)
