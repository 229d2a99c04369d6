"""The codec in bfloat16 (``--codec-dtype``): it builds, decodes and encodes the golden tiny codec
no further from float32 than the reference's own bfloat16 codec does on the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from acestep_jax.codec import MusicCodec
from acestep_jax.codec.codec import codec_in_dtype
from acestep_jax.codec.config import DCAEConfig, VocoderConfig
from acestep_jax.convert.dcae import load_dcae
from acestep_jax.convert.vocoder import load_vocoder

# The reference's bfloat16-vs-float32 drift on these weights and inputs
# (benchmarks/reference_codec_drift.py; benchmarks/RESULTS.md, "Codec in bfloat16").
REFERENCE_DECODE_DRIFT = 0.0242
REFERENCE_ENCODE_DRIFT = 0.0150


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(a)


@pytest.fixture(scope="module")
def codecs(golden):
    g = golden("music_dcae")
    c = g.config
    f32 = MusicCodec.from_parts(
        load_dcae(g.path("dcae.safetensors"), DCAEConfig.from_dict(c["dcae"])),
        load_vocoder(g.path("vocoder.safetensors"), VocoderConfig.from_dict(c["vocoder"])),
        scale_factor=c["scale_factor"], shift_factor=c["shift_factor"],
        min_mel=c["min_mel_value"], max_mel=c["max_mel_value"],
    )
    return g, f32, codec_in_dtype(f32, "bfloat16")


def test_bf16_codec_stores_and_computes_in_bf16(codecs):
    _, f32, bf16 = codecs
    assert bf16.dcae.config.dtype == bf16.vocoder.config.param_dtype == "bfloat16"
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    assert bf16.scale_factor == f32.scale_factor and bf16.max_mel == f32.max_mel


def test_bf16_decode_drift_within_the_reference(codecs):
    g, f32, bf16 = codecs
    latents = g.io["latents_44k"]
    ref, out = f32.decode(latents), bf16.decode(latents)
    assert out.dtype == np.float32 and out.shape == ref.shape and np.isfinite(out).all()
    assert _rel(ref, out) < REFERENCE_DECODE_DRIFT
    # the windowed decode (attention sums accumulated in float32) gives the same audio
    windowed = bf16.decode(latents, window=4)
    assert _rel(out, windowed) < 1e-2


def test_bf16_encode_drift_within_the_reference(codecs):
    g, f32, bf16 = codecs
    ref, _ = f32.encode(g.io["audio_44k"], 44100)
    out, _ = bf16.encode(g.io["audio_44k"], 44100)
    assert out.dtype == jnp.float32 and out.shape == ref.shape
    assert _rel(ref, out) < REFERENCE_ENCODE_DRIFT


def test_random_models_take_the_codec_dtype():
    from acestep_jax.presets import random_models

    codec = random_models("tiny", codec_dtype="bfloat16")[1]
    assert codec.dcae.config.dtype == codec.vocoder.config.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(nnx.state(codec, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
