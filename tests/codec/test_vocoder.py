"""Vocoder (ConvNeXt + HiFi-GAN) against ADaMoSHiFiGANV1 (tiny golden model)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from acestep_jax.codec.config import VocoderConfig
from acestep_jax.codec.vocoder import ConvTranspose1d
from acestep_jax.convert.vocoder import load_vocoder
from tests.helpers import assert_close


def test_vocoder_matches_reference(golden):
    g = golden("vocoder")
    model = load_vocoder(g.path("weights.safetensors"), VocoderConfig.from_dict(g.config))
    wav = nnx.jit(lambda m, mel: m.decode(mel))(model, g.io["mel"])
    assert_close(wav, g.io["wav"], what="wav")


def _torch_conv_transpose(x, w, b, stride, padding):
    """Direct definition: y[o, s*stride + j - padding] += x[i, s] * w[i, o, j]."""
    _, cout, k = w.shape
    length = x.shape[1]
    full = np.zeros((cout, (length - 1) * stride + k))
    for s in range(length):
        full[:, s * stride : s * stride + k] += np.einsum("i,iok->ok", x[:, s], w)
    return full[:, padding : full.shape[1] - padding] + b[:, None]


@pytest.mark.parametrize("k,u", [(8, 4), (4, 2), (5, 2)])
def test_transposed_conv_matches_definition(k, u):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, k)).astype(np.float32)
    b = rng.normal(size=2).astype(np.float32)
    x = rng.normal(size=(3, 7)).astype(np.float32)
    layer = ConvTranspose1d(
        3, 2, k, u, (k - u) // 2, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)
    )
    layer.kernel[...] = jnp.asarray(w.transpose(2, 0, 1))
    layer.bias[...] = jnp.asarray(b)
    y = np.asarray(layer(jnp.asarray(x.T)[None]))[0].T
    assert_close(y, _torch_conv_transpose(x, w, b, u, (k - u) // 2), what="conv_transpose")


def test_config_checks():
    with pytest.raises(ValueError, match="hop_length"):
        VocoderConfig(upsample_rates=(4, 4), upsample_kernel_sizes=(8, 8))
    with pytest.raises(ValueError, match="num_mels"):
        VocoderConfig(num_mels=256)
