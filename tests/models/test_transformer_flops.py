"""The analytic FLOP count agrees with XLA's cost analysis of a one-block decode."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from acestep_jax.models.transformer import ACEStepTransformer, TransformerConfig
from acestep_jax.models.transformer.flops import decode_flops
from acestep_jax.nn import abstract_model


def test_decode_flops_match_xla(golden):
    # one block: XLA's cost analysis counts a scanned body once, so compare without the scan trip count
    cfg = dataclasses.replace(TransformerConfig.from_dict(golden("transformer").config),
                              num_layers=1, ssl_encoder_depths=(0, 0))
    graphdef, state = nnx.split(abstract_model(lambda r: ACEStepTransformer(cfg, rngs=r)))
    b, t, s = 2, 64, 40

    def decode(state, x, mask, context, context_mask, timestep):
        return nnx.merge(graphdef, state).decode(x, mask, context, context_mask, timestep)

    args = (jnp.zeros((b, cfg.in_channels, cfg.max_height, t)), jnp.ones((b, t)),
            jnp.zeros((b, s, cfg.inner_dim)), jnp.ones((b, s)), jnp.ones((b,)))
    cost = jax.jit(decode).lower(state, *args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ratio = cost["flops"] / decode_flops(cfg, b, t, s)
    assert 0.95 < ratio < 1.1, ratio  # XLA also counts elementwise work
