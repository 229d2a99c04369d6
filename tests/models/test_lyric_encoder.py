"""The lyric encoder's block-wise relative-position attention equals the full attention."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from acestep_jax.convert.transformer import load_transformer
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.models.transformer.config import LyricEncoderConfig
from acestep_jax.models.transformer.lyric_encoder import (
    LyricEncoder,
    RelPositionAttention,
    relative_positions,
)
from acestep_jax.nn import abstract_model
from tests.helpers import assert_close


def full_attention(attn: RelPositionAttention, x, key_mask, pos_emb, q_scale=None):
    """The whole ``[B, H, T, T]`` score matrix at once, relative shift by gather (the oracle)."""
    b, t, _ = x.shape
    heads = lambda y: y.reshape(*y.shape[:-1], attn.heads, attn.d_k)
    q = attn.linear_q(x)
    if q_scale is not None:
        q = q * q_scale
    q, k, v = heads(q), heads(attn.linear_k(x)), heads(attn.linear_v(x))
    p = heads(attn.linear_pos(pos_emb))
    content = jnp.einsum("bihd,bjhd->bhij", q + attn.pos_bias_u[...], k)
    position = jnp.einsum("bihd,khd->bhik", q + attn.pos_bias_v[...], p)
    idx = (t - 1) - jnp.arange(t)[:, None] + jnp.arange(t)[None, :]  # offset i - j
    position = jnp.take_along_axis(position, jnp.broadcast_to(idx, (b, attn.heads, t, t)), axis=-1)
    scores = (content + position) / math.sqrt(attn.d_k)
    allowed = key_mask[:, None, None, :]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    out = jnp.where(allowed, jax.nn.softmax(scores, axis=-1), 0.0)
    return attn.linear_out(jnp.einsum("bhij,bjhd->bihd", out, v).reshape(b, t, -1))


def _masks(t):
    mask = np.ones((3, t), bool)
    mask[0, t - 6 :] = False  # padded lyric tokens
    mask[2] = False  # empty lyrics: every key masked
    return jnp.asarray(mask)


@pytest.mark.parametrize("t", [1, 2, 37])
@pytest.mark.parametrize("block", [1, 4, 7, 64])
def test_blocks_equal_full_attention(t, block):
    attn = RelPositionAttention(32, 4, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, t, 32))
    pos = jnp.asarray(relative_positions(t, 32))
    mask = _masks(t)
    for scale in (None, jnp.float32(0.01)):  # ERG scales the queries
        expect = full_attention(attn, x, mask, pos, scale)
        got = attn(x, mask, pos, scale, query_block=block)
        assert_close(got, expect, rtol=1e-5, atol=1e-5, what=f"t={t} block={block} scale={scale}")
    np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(attn.linear_out.bias[...])[None].repeat(t, 0))


def test_encoder_blocks_equal_one_block():
    cfg = LyricEncoderConfig(output_size=32, attention_heads=2, linear_units=64, num_blocks=3)
    enc = LyricEncoder(16, cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    t = 45
    x = jax.random.normal(jax.random.key(2), (3, t, 16))
    mask = _masks(t).astype(jnp.int32)
    scales = jnp.asarray([1.0, 0.01, 0.01])
    whole = enc(x, mask, scales, query_block=t)
    for block in (8, 13):
        assert_close(enc(x, mask, scales, query_block=block), whole, rtol=1e-5, atol=1e-5, what=f"block={block}")


def test_golden_lyrics_in_small_blocks(golden):
    """The reference's encoder states, computed 4 queries at a time (the golden lyrics span several blocks)."""
    g = golden("transformer")
    model = load_transformer(g.path("weights.safetensors"), TransformerConfig.from_dict(g.config))
    ids, mask = g.io["lyric_token_idx"], g.io["lyric_mask"]
    assert ids.shape[1] > 4
    lyrics = model.lyric_proj(model.lyric_encoder(model.lyric_embs(jnp.asarray(ids)), jnp.asarray(mask),
                                                  query_block=4))
    expect = g.io["encoder_hidden_states"][:, -ids.shape[1] :]
    assert_close(lyrics, expect, what="lyric states, blocks of 4")


def test_gradients_equal_full_attention():
    attn = RelPositionAttention(32, 4, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(3))
    t = 21
    x = jax.random.normal(jax.random.key(4), (3, t, 32))
    pos, mask = jnp.asarray(relative_positions(t, 32)), _masks(t)
    loss = lambda f: lambda m, x: jnp.sum(jnp.sin(f(m, x)))
    blocked = nnx.grad(loss(lambda m, x: m(x, mask, pos, query_block=4)), argnums=(0, 1))(attn, x)
    full = nnx.grad(loss(lambda m, x: full_attention(m, x, mask, pos)), argnums=(0, 1))(attn, x)
    for got, expect in zip(jax.tree.leaves(blocked), jax.tree.leaves(full), strict=True):
        assert_close(got, expect, rtol=1e-5, atol=1e-5, what="gradient")


def test_dropout_layer():
    from acestep_jax.nn import dropout

    x = jnp.ones((200, 500))
    np.testing.assert_array_equal(np.asarray(dropout(x, None, 0.1)), 1.0)  # inference: identity
    np.testing.assert_array_equal(np.asarray(dropout(x, jax.random.key(0), 0.0)), 1.0)
    out = np.asarray(dropout(x, jax.random.key(0), 0.1))
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.9)}
    assert abs((out == 0).mean() - 0.1) < 0.005


def test_training_dropout_in_the_golden_encoder(golden):
    """With a key the lyric encoder drops units (a different output, the same for the same key);
    at rate 0 a key changes nothing; without a key it is the reference's eval mode."""
    g = golden("transformer")
    cfg = TransformerConfig.from_dict(g.config)
    model = load_transformer(g.path("weights.safetensors"), cfg)
    x, mask = model.lyric_embs(jnp.asarray(g.io["lyric_token_idx"])), jnp.asarray(g.io["lyric_mask"])
    plain = np.asarray(model.lyric_encoder(x, mask))
    a = np.asarray(model.lyric_encoder(x, mask, dropout_key=jax.random.key(1)))
    b = np.asarray(model.lyric_encoder(x, mask, dropout_key=jax.random.key(1)))
    c = np.asarray(model.lyric_encoder(x, mask, dropout_key=jax.random.key(2)))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - plain).max() > 1e-2 and np.abs(a - c).max() > 1e-2
    off = dataclasses.replace(cfg.lyric_encoder, dropout_rate=0.0, positional_dropout_rate=0.0)
    silent = nnx.merge(nnx.graphdef(abstract_model(lambda r: LyricEncoder(cfg.lyric_hidden_size, off, dtype=jnp.float32,
                                                                         param_dtype=jnp.float32, rngs=r))),
                       nnx.state(model.lyric_encoder))
    np.testing.assert_array_equal(np.asarray(silent(x, mask, dropout_key=jax.random.key(1))), plain)
    with pytest.raises(ValueError, match="dropout_rate"):
        LyricEncoderConfig(dropout_rate=1.0)
