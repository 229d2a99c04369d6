"""End to end, a request's latents and audio do not depend on its batch beyond float32 rounding.

The README's tolerance: latents within 1e-4 (absolute; they are of order one) and audio
within 1e-4 of the item's peak. Only rounding differs between batch sizes (matmuls and
convolutions of other shapes sum in other orders); the decode takes no batch-wide statistic
and masks every item at its own length.
"""

import numpy as np
import pytest

from acestep_jax.pipeline import ACEStepPipeline
from acestep_jax.sampling import SamplingParams

LATENT_ATOL = 1e-4
AUDIO_RTOL = 1e-4  # of the item's peak

BASE = SamplingParams(duration=1.0, infer_steps=2, scheduler_type="euler", guidance_scale=5.0,
                      bucket=True, batch_invariant=True)
# mixed durations (one 128-frame bucket) and per-item parameters; item i has seed 100 + i
REQUESTS = [BASE.replace(duration=d, guidance_scale=4.0 + i, omega_scale=float(i))
            for i, d in enumerate([1.0, 0.6, 1.4, 0.6, 1.0, 1.4, 0.6, 1.0])]
PROMPTS = ["rock, drums", "piano, sad, slow", "funk", "ambient pads, rain", "metal", "jazz trio",
           "lofi beat, vinyl", "choir"]


@pytest.fixture(scope="module")
def pipe():
    return ACEStepPipeline.random("tiny", 0)


def _run(pipe, idx):
    return pipe.generate([PROMPTS[i] for i in idx], [""] * len(idx), [REQUESTS[i] for i in idx],
                         seeds=[100 + i for i in idx])


@pytest.fixture(scope="module")
def alone(pipe):
    return {i: _run(pipe, [i]) for i in range(4)}


def _check(alone, out, idx, what):
    for pos, i in enumerate(idx):
        if i not in alone:
            continue
        ref = alone[i]
        frames = ref.latents.shape[-1]
        lat = out.latents[pos]
        np.testing.assert_allclose(lat[..., :frames], ref.latents[0], rtol=0, atol=LATENT_ATOL,
                                   err_msg=f"{what}: latents of item {i}")
        assert not lat[..., frames:].any(), f"{what}: item {i} is not zero past its length"
        audio, ref_audio = out.item_audio(pos), ref.item_audio(0)
        assert audio.shape == ref_audio.shape, what
        peak = np.abs(ref_audio).max()
        assert peak > 0
        err = np.abs(audio - ref_audio).max()
        assert err <= AUDIO_RTOL * peak, f"{what}: audio of item {i} differs by {err:.3g} (peak {peak:.3g})"


@pytest.mark.parametrize("idx", [[1, 0], [3, 7, 1, 6, 2, 4, 0, 5]], ids=["b2", "b8"])
def test_items_equal_their_solo_runs(pipe, alone, idx):
    _check(alone, _run(pipe, idx), idx, f"batch of {len(idx)}")


def test_random_codec_is_not_saturated(pipe):
    """The tiny random vocoder stays in tanh's linear range: when its convolutions' gain reached
    ~1e12 the audio was a +-1 square wave and rounding flipped whole samples between batch sizes."""
    audio = pipe.decode(np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32), 44100)
    assert 0 < np.abs(audio).max() < 0.5


def test_decode_in_batches_of_three_to_seven(pipe):
    """The sizes the end-to-end cases above leave out, on the decode alone."""
    latents = np.random.default_rng(1).standard_normal((7, 8, 16, 8)).astype(np.float32)
    alone = pipe.decode(latents[:1], 44100)[0]
    peak = np.abs(alone).max()
    for b in range(3, 8):
        err = np.abs(pipe.decode(latents[:b], 44100)[0] - alone).max()
        assert err <= AUDIO_RTOL * peak, f"batch of {b}: {err:.3g} (peak {peak:.3g})"
