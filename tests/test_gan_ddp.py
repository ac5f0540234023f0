"""Data-parallel StyleGAN2-ADA steps: two gloo processes on CPU equal one process on the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from viscoin_core.train import gan
from test_gan import TinyImages, changed, tiny_config, tiny_state

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 2


def config():
    # Per-layer noise 'const': G's random noise is drawn per process and cannot match one process.
    # batch_gpu 2: one process runs two rounds of 2 images, exactly what each of two processes runs once.
    return tiny_config(batch=4, batch_gpu=2, noise_mode="const", augment_p=0.3)


def run_steps() -> dict:
    cfg = config()
    state = tiny_state(cfg)
    data = TinyImages()
    for _ in range(STEPS):
        draws = gan.draw_step(cfg, state.step, len(data), state.G.z_dim, state.G.num_ws, 3, 16, state.p)
        gan.train_step(state, cfg, gan.reals_reader(data), draws, torch.device("cpu"))
    return {"G": state.G.state_dict(), "D": state.D.state_dict(), "G_ema": state.G_ema.state_dict(),
            "pl_mean": state.pl_mean, "p": state.p}


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.save(run_steps(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    single = run_steps()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for net in ("G", "D", "G_ema"):
        assert not changed(ranks[0][net], ranks[1][net]), f"{net} differs between processes"
        for key, value in single[net].items():
            assert torch.allclose(ranks[0][net][key], value, atol=1e-5, rtol=1e-4), f"{net}.{key}"
    assert torch.allclose(ranks[0]["pl_mean"], single["pl_mean"], rtol=1e-5)
    assert ranks[0]["p"] == single["p"]
    # and the steps did train: the one-process result moved away from the start
    start = tiny_state(config())
    assert changed({k: v for k, v in start.G.state_dict().items()}, single["G"])
