"""DC-AE encoder and decoder against diffusers' AutoencoderDC (tiny golden model)."""

import numpy as np
import pytest
from flax import nnx

from acestep_jax.codec.config import DCAEConfig
from acestep_jax.codec.dcae import depth_to_space, space_to_depth
from acestep_jax.convert.dcae import load_dcae
from tests.helpers import assert_close


@pytest.fixture(scope="module")
def dcae(golden):
    g = golden("dcae")
    return g, load_dcae(g.path("weights.safetensors"), DCAEConfig.from_dict(g.config))


def test_encoder_matches_reference(dcae):
    g, model = dcae
    latent = nnx.jit(lambda m, mel: m.encode(mel))(model, g.io["mel"])
    assert_close(latent, g.io["latent"], what="latent")


def test_decoder_matches_reference(dcae):
    g, model = dcae
    mel = nnx.jit(lambda m, z: m.decode(z))(model, g.io["latent"])
    assert_close(mel, g.io["mel_decoded"], what="mel_decoded")


def test_pixel_shuffle_layout():
    # channel c*4 + 2*i + j of the unshuffled tensor is pixel (2h+i, 2w+j) of channel c
    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    y = np.asarray(space_to_depth(x))
    assert y.shape == (2, 2, 3, 12)
    assert y[1, 1, 2, 2 * 4 + 2 * 1 + 0] == x[1, 3, 4, 2]
    np.testing.assert_array_equal(depth_to_space(y), x)


def test_bad_input_shape_is_refused(dcae):
    _, model = dcae
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(np.zeros((1, 2, 32, 44), np.float32))


def test_config_ignores_reference_metadata(golden):
    reference = golden("dcae").config
    cfg = DCAEConfig.from_dict(
        {"_class_name": "AutoencoderDC", "_diffusers_version": "0.32", **reference}
    )
    assert cfg.decoder_layers_per_block == tuple(reference["decoder_layers_per_block"])
    assert DCAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="upsample_block_type"):
        DCAEConfig(upsample_block_type="bicubic")
