"""``stacked`` and ``abstract_model``: an abstract build (no ``nnx.Rngs``) describes the same
parameters as a build with one, and stacked layers split their keys."""

import dataclasses

import numpy as np
from flax import nnx

from acestep_jax.models.transformer import ACEStepTransformer
from acestep_jax.nn import Dense, abstract_model, stacked
from acestep_jax.presets import preset_config


def _described(model) -> dict:
    return {p: (v.shape, v.dtype, v.get_metadata()) for p, v in nnx.to_flat_state(nnx.state(model))}


def test_abstract_model_describes_what_a_seeded_build_holds():
    for unroll in (False, True):
        cfg = dataclasses.replace(preset_config("tiny", "transformer"), unroll_blocks=unroll, num_layers=3,
                                  ssl_encoder_depths=(0, 1))
        seeded = nnx.eval_shape(lambda cfg=cfg: ACEStepTransformer(cfg, rngs=nnx.Rngs(0)))
        assert _described(abstract_model(lambda r, cfg=cfg: ACEStepTransformer(cfg, rngs=r))) == _described(seeded)


def test_stacked_layers_draw_their_own_weights():
    layers = stacked(lambda r: Dense(4, 3, rngs=r), 5, nnx.Rngs(0))
    kernel = np.asarray(layers.kernel[...])
    assert kernel.shape == (5, 4, 3) and layers.kernel.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
    assert len({k.tobytes() for k in kernel}) == 5
    same = stacked(lambda r: Dense(4, 3, rngs=r), 5, None)  # no Rngs: every layer from one key
    assert np.all(np.asarray(same.kernel[...]) == np.asarray(same.kernel[...])[0])

