"""Named random streams: every seeded draw of a run comes from a stream named for what it draws.

A stream's seed is a function of (the run's seed, the stream's name, an index) only. The index is
an epoch, an iteration, a position in the sample stream, or 0 for a one-off draw. So any process at
any time draws the same numbers (resuming and several processes stay exact), a new draw gets its
own name instead of a borrowed seed, and reading the table below says which draws are independent.

Two schemes, both as the code used them before the streams had names, so that every drawn number
stayed the same when the names came in:
- `AFFINE` streams: seed * multiplier + offset + index (mod 2**62: torch takes 64-bit seeds; below
  10**12 for the run seed, the modulo changes nothing). The large prime multipliers keep the VisCoIN
  trainer's per-index streams apart for any two seeds.
- `GAN_STEP` streams: NumPy's SeedSequence of (seed, index = step, the purpose's position in
  GAN_STEP), hashed, so any (seed, step, purpose) gives an unrelated generator.

Global RNG seeding (`train.loop.seed_everything`) and a function's own `seed` argument are not
streams: the caller names the stream whose seed it passes.
"""

from __future__ import annotations

import numpy as np
import torch

# name -> (multiplier, offset). The values are what each draw used before it had a name.
AFFINE = {
    # VisCoIN training (train/viscoin.py, model.py)
    "viscoin.init_f": (1, 0),                 # a random f's weights
    "viscoin.init_G": (1, 0),                 # a random G's weights and its w_avg
    "viscoin.init_parts": (1, 1),             # Psi, Theta, Omega
    "viscoin.loader": (1, 0),                 # the DataLoader's own generator (kept off the global RNG)
    "viscoin.epoch_order": (1_000_003, 0),    # index: epoch; the permutation of the training images
    "viscoin.augment": (2_000_003, 0),        # index: position in the sample stream; pad-crop and flip
    "viscoin.fake_z": (3_000_017, 1),         # index: iteration; the latents of the synthetic images
    # index: iteration; the second latents and crossovers of their style mixing (latent regression in w+
    # only). A new draw: the offset 2**40 keeps its seeds clear of fake_z's (equal at seed 0 otherwise,
    # which would mix every sample with itself) and of every other stream of the same run
    "viscoin.fake_mix": (5_000_011, 2**40),
    "viscoin.eval_subset": (4_000_037, 1),    # the test images of the trainer's checks
    "viscoin.kid": (0, 0),                    # KID's subsets in the trainer's final check: the same for every seed
    # classifier fine-tuning (train/classifier.py)
    "classifier.val_split": (1, 0),           # which training images are held out for validation
    "classifier.epoch_order": (1000, 0),      # index: epoch; the shuffled order of an epoch
    # GAN training outside the step (train/gan.py)
    "gan.fid_reals": (1, 0),                  # the real images FID compares against
    "gan.fid_fakes": (1, 12345),              # the latents of FID's generated images
    "gan.grid_reals": (1, 0),                 # the real images of reals.png
    "gan.grid_fakes": (1, 777),               # the latents of the sample grids
    "gan.kid": (1, 0),                        # KID's subsets
    # evaluation (eval/__init__.py, eval/audit.py)
    "eval.test_subset": (1, 0),               # the evaluated test images (evaluate and the audit share them)
    "eval.train_subset": (1, 1),              # the training images consistency searches
    "eval.faithfulness": (1, 2),              # its subset of the test images and the random baseline
    "eval.consistency": (1, 0),               # the concepts evaluated and the SVM's folds
    "eval.kid": (1, 0),                       # KID's subsets
    "eval.untrained_psi": (1, 12345),         # the untrained Psi that alignment is compared with
    "eval.localisation": (1, 3),              # the evaluated test images concept localisation edits
}

# The GAN step's purposes; a purpose's position is part of its seed, so the order is fixed.
GAN_STEP = ("reals", "mirror", "z_gmain", "z_greg", "z_dmain", "mix", "aug_gmain", "aug_dgen", "aug_dreal",
            "aug_dreg", "pl_noise", "noise")


def stream_seed(seed: int, name: str, index: int = 0) -> int:
    """The seed of stream `name` at `index` for a run with `seed` (an int in [0, 2**63)).

    `name` is a key of AFFINE, or 'gan.<purpose>' for a purpose in GAN_STEP (index = the step).
    """
    family, _, purpose = name.partition(".")
    if family == "gan" and purpose in GAN_STEP:
        state = np.random.SeedSequence([seed, index, GAN_STEP.index(purpose)]).generate_state(2, dtype=np.uint64)
        return int(state[0] % (2**63 - 1))
    if name not in AFFINE:
        raise KeyError(f"unknown random stream {name!r}; known: {sorted(AFFINE)} and gan.<{'|'.join(GAN_STEP)}>")
    multiplier, offset = AFFINE[name]
    return (seed * multiplier + offset + index) % 2**62


def generator(seed: int, name: str, index: int = 0) -> torch.Generator:
    """A CPU generator for stream `name` at `index` (see `stream_seed`); nothing global moves."""
    return torch.Generator().manual_seed(stream_seed(seed, name, index))
