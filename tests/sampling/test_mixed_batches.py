"""Heterogeneous batches: per-item parameters in one program, batch-invariant results."""

import dataclasses

import jax
import numpy as np
import pytest

from acestep_jax.sampling import Noise, SamplingParams, generate, seconds_to_frames
from acestep_jax.sampling.tasks import item_params
from tests.helpers import assert_close
from tests.sampling.conftest import make_cond

BASE = SamplingParams(duration=2.0, infer_steps=5, scheduler_type="euler", guidance_interval=0.6,
                      bucket=True, batch_invariant=True)
# four requests differing in every per-item field
REQUESTS = [
    BASE.replace(guidance_scale=15.0, omega_scale=10.0),
    BASE.replace(duration=1.2, guidance_scale=7.0, omega_scale=3.0, use_erg_lyric=False, use_erg_tag=False),
    BASE.replace(guidance_interval=1.0, guidance_interval_decay=1.0, min_guidance_scale=2.0, use_erg_diffusion=False),
    BASE.replace(duration=0.8, guidance_scale=4.0, omega_scale=-5.0, use_erg_tag=False),
]
SEEDS = [11, 12, 13, 14]


def _conds(io, n):
    """``n`` items with different prompts (the golden's two, scaled per item)."""
    cond = make_cond(io, batch=n)
    scale = np.linspace(0.6, 1.4, n, dtype=np.float32)[:, None, None]
    return dataclasses.replace(cond, text=cond.text * scale, text_null=cond.text_null * scale[::-1])


def _item(cond, i):
    return jax.tree.map(lambda a: a[i : i + 1], cond)


@pytest.fixture(scope="module")
def solo(tiny_model, pipeline_golden):
    cond = _conds(pipeline_golden.io, len(REQUESTS))
    return [np.asarray(generate(tiny_model, p, _item(cond, i), [SEEDS[i]]))[0] for i, p in enumerate(REQUESTS)]


def _check(out, solo, what):
    for i, (p, ref) in enumerate(zip(REQUESTS, solo, strict=True)):
        frames = seconds_to_frames(p.duration)
        assert ref.shape[-1] == frames
        assert_close(out[i][..., :frames], ref, rtol=1e-4, atol=1e-4, what=f"{what}: item {i}")
        assert not np.any(out[i][..., frames:]), f"{what}: item {i} is not zero past its length"


@pytest.mark.slow
def test_mixed_requests_equal_their_solo_runs(tiny_model, pipeline_golden, solo):
    cond = _conds(pipeline_golden.io, len(REQUESTS))
    out = np.asarray(generate(tiny_model, REQUESTS, cond, SEEDS))
    _check(out, solo, "batched")


def test_filler_items_change_nothing(tiny_model, pipeline_golden, solo):
    n = 8
    cond = _conds(pipeline_golden.io, len(REQUESTS))
    cond = jax.tree.map(lambda a: np.concatenate([a, a[: n - len(REQUESTS)][::-1]]), cond)
    requests = REQUESTS + [BASE.replace(guidance_scale=9.0, duration=0.5)] * (n - len(REQUESTS))
    out = np.asarray(generate(tiny_model, requests, cond, SEEDS + [0] * (n - len(REQUESTS))))
    _check(out, solo, "with fillers")


def test_coupled_mode_is_the_reference_behaviour(tiny_model, pipeline_golden):
    """Without batch invariance the mean shift spans the batch (the reference), so a partner changes an item."""
    cond = _conds(pipeline_golden.io, 2)
    coupled = [p.replace(batch_invariant=False, duration=2.0) for p in REQUESTS[:2]]
    both = np.asarray(generate(tiny_model, coupled, cond, Noise.from_seeds(SEEDS[:2])))
    alone = np.asarray(generate(tiny_model, coupled[0], _item(cond, 0), [SEEDS[0]]))
    assert np.abs(both[0] - alone[0]).max() > 1e-4


def test_items_must_share_the_program_structure():
    with pytest.raises(ValueError, match="scheduler_type"):
        item_params([BASE, BASE.replace(scheduler_type="heun")], 2)
    with pytest.raises(ValueError, match="guidance"):
        item_params([BASE, BASE.replace(guidance_scale=1.0)], 2)  # scale 1 switches guidance off
    with pytest.raises(ValueError, match="3 SamplingParams for a batch of 2"):
        item_params([BASE] * 3, 2)
    assert item_params([BASE, BASE.replace(omega_scale=1.0, duration=3.0)], 2)[1].omega_scale == 1.0
