"""Named random streams: each name keeps the seed its draw had before the names, and names stay apart."""

import numpy as np
import pytest
import torch

from viscoin_core import streams


def test_affine_streams_keep_the_seeds_the_draws_had_before_they_had_names():
    seed = 7
    assert streams.stream_seed(seed, "viscoin.epoch_order", 3) == seed * 1_000_003 + 3
    assert streams.stream_seed(seed, "viscoin.augment", 10) == (seed * 2_000_003 + 10) % 2**62
    assert streams.stream_seed(seed, "viscoin.fake_z", 4) == seed * 3_000_017 + 4 + 1
    assert streams.stream_seed(seed, "viscoin.eval_subset") == seed * 4_000_037 + 1
    assert streams.stream_seed(seed, "viscoin.init_parts") == seed + 1
    assert streams.stream_seed(seed, "classifier.epoch_order", 2) == seed * 1000 + 2
    assert streams.stream_seed(seed, "eval.faithfulness") == seed + 2


def test_gan_step_streams_hash_seed_step_and_purpose():
    state = np.random.SeedSequence([5, 11, streams.GAN_STEP.index("mirror")]).generate_state(2, dtype=np.uint64)
    assert streams.stream_seed(5, "gan.mirror", 11) == int(state[0] % (2**63 - 1))
    seeds = {streams.stream_seed(5, f"gan.{p}", 11) for p in streams.GAN_STEP}
    assert len(seeds) == len(streams.GAN_STEP)


def test_a_generator_draws_its_stream_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = torch.rand(3, generator=streams.generator(1, "viscoin.fake_z", 2))
    b = torch.rand(3, generator=torch.Generator().manual_seed(1 * 3_000_017 + 2 + 1))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), before)


def test_an_unknown_stream_is_refused_by_name():
    with pytest.raises(KeyError, match="viscoin.typo"):
        streams.stream_seed(0, "viscoin.typo")
