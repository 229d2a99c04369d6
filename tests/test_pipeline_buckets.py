"""A warmed duration bucket serves every exact duration inside it without compiling."""

import numpy as np
import pytest

from acestep_jax.codec.codec import FRAME_SAMPLES, SAMPLE_RATE, seconds_to_frames
from acestep_jax.codec.resample import resampled_length
from acestep_jax.pipeline import ACEStepPipeline
from acestep_jax.sampling import SamplingParams
from tests.helpers import assert_close, compile_events


@pytest.fixture(scope="module")
def pipe():
    return ACEStepPipeline.random("tiny", 0)


def _params(duration):
    return SamplingParams(duration=duration, infer_steps=2, guidance_scale=3.0, bucket=True)


def test_new_duration_inside_a_warm_bucket_compiles_nothing(pipe):
    """Conditioning, the sampling loop, the decode and the resampler all depend on the
    bucket's length only: the noise is drawn at the bucket's length, the loop keeps its
    padding and the decode masks each item at its own length."""
    with compile_events() as warm:
        pipe.generate(["rock"], [""], _params(5.0), seeds=[1], retake_seeds=[2])
        pipe.generate(["rock", "jazz"], [""], [_params(5.0), _params(2.2)], seeds=[1, 2], retake_seeds=[3, 4])
    assert warm  # the listener sees compilations
    with compile_events() as seen:
        out = pipe.generate(["piano"], [""], _params(6.3), seeds=[3], retake_seeds=[5])
        mixed = pipe.generate(["piano", "folk"], [""], [_params(9.9), _params(0.7)], seeds=[5, 6],
                              retake_seeds=[7, 8])
    assert not seen, f"traced or compiled for new durations inside a warm bucket: {seen}"
    assert mixed.lengths[1] < mixed.lengths[0] == mixed.audio.shape[-1]
    assert not mixed.audio[1, :, mixed.lengths[1] :].any()
    frames = seconds_to_frames(6.3)
    assert out.latents.shape[-1] == frames
    assert out.lengths == [resampled_length(frames * FRAME_SAMPLES, SAMPLE_RATE, 48000)]
    assert out.audio.shape[-1] == out.lengths[0]


def test_bucketed_generation_equals_the_exact_length_run(pipe):
    """Padding (the loop's and the decode's) changes nothing beyond the stated tolerance."""
    exact = pipe.generate(["rock"], [""], _params(3.1).replace(bucket=False), seeds=[7], retake_seeds=[8])
    padded = pipe.generate(["rock"], [""], _params(3.1), seeds=[7], retake_seeds=[8])
    assert_close(padded.latents, exact.latents, what="latents")
    peak = float(np.abs(exact.audio).max())
    assert padded.audio.shape == exact.audio.shape
    assert_close(padded.audio, exact.audio, rtol=0, atol=1e-4 * peak, what="audio")


def test_long_outputs_decode_in_windows_without_compiling(pipe):
    """Past ``OVERLAP_DECODE_SECONDS`` the windowed decode is one program per bucket too."""
    from acestep_jax.pipeline import OVERLAP_DECODE_SECONDS

    params = [_params(OVERLAP_DECODE_SECONDS + 1.5).replace(infer_steps=1)]
    pipe.generate(["rock"], [""], params, seeds=[1], retake_seeds=[2])
    with compile_events() as seen:
        out = pipe.generate(["rock"], [""], [params[0].replace(duration=OVERLAP_DECODE_SECONDS + 4.0)],
                            seeds=[1], retake_seeds=[2])
    assert not seen, f"traced or compiled for a new long duration: {seen}"
    assert out.audio.shape[-1] == out.lengths[0]
