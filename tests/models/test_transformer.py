"""Parity of the Flax transformer with the PyTorch reference (tests/golden/transformer)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from acestep_jax.convert.transformer import load_transformer
from acestep_jax.models.transformer import (
    ACEStepTransformer,
    TransformerConfig,
    layer_scales,
)
from acestep_jax.nn import abstract_model
from acestep_jax.training.loss import masked_repa_loss
from tests.helpers import assert_close, padded_items


@pytest.fixture(scope="module")
def tiny(golden):
    """The golden model; its inputs are the reference's batched layout (prompts padded to the
    batch's longest), so its conditions are positioned the ``"batch"`` way."""
    g = golden("transformer")
    cfg = TransformerConfig.from_dict(g.config, context_positions="batch")
    return load_transformer(g.path("weights.safetensors"), cfg), g.io, g.extra


def _dist(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_encode(tiny):
    model, io, _ = tiny
    states, mask, positions = model.encode(
        io["text_hidden_states"], io["text_attention_mask"], io["speaker_embeds"],
        io["lyric_token_idx"], io["lyric_mask"],
    )
    assert_close(states, io["encoder_hidden_states"], what="encoder_hidden_states")
    np.testing.assert_array_equal(np.asarray(mask), io["encoder_hidden_mask"])
    rows = np.broadcast_to(np.arange(states.shape[1]), mask.shape)
    np.testing.assert_array_equal(np.asarray(positions), rows)  # the golden's widest prompt fills its width


def _forward(model, io, items, text_len=None, lyric_len=None, **kw):
    """The whole forward on ``items`` of the golden batch, prompts and lyrics cut to the given widths."""
    text_len = text_len or io["text_attention_mask"].shape[1]
    lyric_len = lyric_len or io["lyric_mask"].shape[1]
    return np.asarray(model(
        io["hidden_states"][items], io["attention_mask"][items], io["text_hidden_states"][items, :text_len],
        io["text_attention_mask"][items, :text_len], io["speaker_embeds"][items],
        io["lyric_token_idx"][items, :lyric_len], io["lyric_mask"][items, :lyric_len], io["timestep"][items], **kw,
    ))


def test_item_positions_equal_each_item_alone(tiny):
    """``context_positions="item"``: each item of the padded batch equals the item run alone
    with no padding at all (the reference's batch of one); the ``"batch"`` layout does not."""
    model, io, _ = tiny
    item_model = nnx.merge(nnx.graphdef(_with_cfg(model, context_positions="item")), nnx.state(model))
    batched = _forward(item_model, io, slice(None))
    for i in range(io["hidden_states"].shape[0]):
        alone = _forward(model, io, [i], int(io["text_attention_mask"][i].sum()), int(io["lyric_mask"][i].sum()))
        assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5, what=f"item {i} in the batch vs alone")
    padded = int(np.argmin(io["text_attention_mask"].sum(1)))  # the item whose prompt the batch pads
    assert _dist(io["forward_out"][padded], batched[padded]) > 1e-3


def _with_cfg(model, **changes):
    cfg = dataclasses.replace(model.cfg, **changes)
    return abstract_model(lambda r: ACEStepTransformer(cfg, rngs=r))


def test_decode_and_forward(tiny):
    model, io, _ = tiny
    out = model.decode(
        io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
        io["encoder_hidden_mask"], io["timestep"],
    )
    assert_close(out, io["decode_out"], rtol=1e-3, atol=1e-3, what="decode")
    full = model(
        io["hidden_states"], io["attention_mask"], io["text_hidden_states"], io["text_attention_mask"],
        io["speaker_embeds"], io["lyric_token_idx"], io["lyric_mask"], io["timestep"],
    )
    assert_close(full, io["forward_out"], rtol=1e-3, atol=1e-3, what="forward")


def test_decode_padded_mask(tiny):
    model, io, _ = tiny
    out = model.decode(
        io["hidden_states"], io["attention_mask_padded"], io["encoder_hidden_states"],
        io["encoder_hidden_mask"], io["timestep"],
    )
    assert_close(out, io["decode_out_padded"], rtol=1e-3, atol=1e-3, what="decode padded")
    assert _dist(out, io["decode_out_padded"]) < 0.01 * _dist(out, io["decode_out"])


def test_isolate_padding(tiny):
    """With ``isolate_padding`` extra masked frames leave the valid frames' output unchanged;
    with an all-ones mask it changes nothing."""
    model, io, _ = tiny
    x, t = io["hidden_states"], io["timestep"]
    args = (io["encoder_hidden_states"], io["encoder_hidden_mask"], t)
    plain = model.decode(x, io["attention_mask"], *args)
    same = model.decode(x, io["attention_mask"], *args, isolate_padding=True)
    np.testing.assert_allclose(np.asarray(same), np.asarray(plain), rtol=1e-6, atol=1e-6)
    pad = 11
    noise = np.random.default_rng(0).standard_normal((*x.shape[:-1], pad)).astype(np.float32)
    padded_x = np.concatenate([x, noise], axis=-1)
    padded_mask = np.concatenate([io["attention_mask"], np.zeros((x.shape[0], pad), np.float32)], axis=-1)
    out = model.decode(padded_x, padded_mask, *args, isolate_padding=True)
    assert_close(np.asarray(out)[..., : x.shape[-1]], plain, what="bucket-padded decode")
    leaky = model.decode(padded_x, padded_mask, *args)
    assert _dist(np.asarray(leaky)[..., : x.shape[-1]], plain) > 1e-3  # the reference's behaviour leaks


def test_erg_lyric_null_condition(tiny, golden):
    model, io, extra = tiny
    erg = extra["erg"]
    scales = layer_scales(model.cfg.lyric_encoder.num_blocks, erg["lyric_encoder_layers"], erg["tau"])
    args = (
        jnp.zeros_like(io["text_hidden_states"]), io["text_attention_mask"],
        jnp.zeros_like(io["speaker_embeds"]), io["lyric_token_idx"], io["lyric_mask"],
    )
    states = model.encode(*args, lyric_query_scales=scales).states
    plain = model.encode(*args).states
    expected = io["encoder_hidden_states_erg_null"]
    assert_close(states, expected, what="ERG null condition")
    assert _dist(states, expected) < 0.1 * _dist(plain, expected)


def test_erg_diffusion(tiny):
    model, io, extra = tiny
    erg = extra["erg"]
    scales = layer_scales(model.cfg.num_layers, erg["transformer_layers"], erg["tau"])
    out = model.decode(
        io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
        io["encoder_hidden_mask"], io["timestep"], query_scales=scales,
    )
    assert_close(out, io["decode_out_erg"], rtol=1e-3, atol=1e-3, what="ERG decode")
    assert _dist(out, io["decode_out_erg"]) < 0.1 * _dist(io["decode_out"], io["decode_out_erg"])


def test_repa_losses(tiny):
    model, io, extra = tiny
    out, projected = model.decode(
        io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
        io["encoder_hidden_mask"], io["timestep"], return_repa=True,
    )
    assert_close(out, io["decode_out"], rtol=1e-3, atol=1e-3, what="decode with REPA taps")
    for proj, prefix, name in zip(projected, ("ssl_mert", "ssl_mhubert"), model.cfg.ssl_names):
        padded, lengths = padded_items(io, prefix, io["hidden_states"].shape[0])
        frames = np.full((proj.shape[0],), proj.shape[1])
        loss = masked_repa_loss(proj, frames, padded, lengths)
        np.testing.assert_allclose(float(loss), extra["repa_proj_losses"][name], rtol=1e-4, atol=1e-5)


def test_jit_and_scan_compile_once(tiny):
    model, io, _ = tiny
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def run(state, x, t):
        traces.append(1)
        m = nnx.merge(graphdef, state)
        return m.decode(x, io["attention_mask"], io["encoder_hidden_states"], io["encoder_hidden_mask"], t)

    out = run(state, io["hidden_states"], io["timestep"])
    run(state, io["hidden_states"] * 0.5, io["timestep"] * 0.5)
    assert len(traces) == 1
    assert_close(out, io["decode_out"], rtol=1e-3, atol=1e-3, what="jitted decode")
    hlo = run.lower(state, io["hidden_states"], io["timestep"]).as_text()
    assert "while" in hlo  # the blocks run as one scanned body


@pytest.mark.parametrize("remat", ["full", "dots", "outputs"])
def test_remat_gradients_match(tiny, remat):
    model, io, _ = tiny
    remat_model = nnx.merge(nnx.graphdef(_with_cfg(model, remat=remat)), nnx.state(model))

    def loss(m):
        out = m.decode(io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
                       io["encoder_hidden_mask"], io["timestep"])
        return jnp.mean(out**2)

    g_plain = nnx.grad(loss)(model)
    g_remat = nnx.grad(loss)(remat_model)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_close(tiny, golden):
    g = golden("transformer")
    cfg = TransformerConfig.from_dict(g.config, dtype="bfloat16", param_dtype="bfloat16")
    model = load_transformer(g.path("weights.safetensors"), cfg)
    assert model.blocks.attn.to_q.kernel.dtype == jnp.bfloat16
    io = g.io
    out = model.decode(io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
                       io["encoder_hidden_mask"], io["timestep"])
    assert out.dtype == jnp.bfloat16
    rel = np.abs(np.asarray(out, np.float32) - io["decode_out"]).mean() / np.abs(io["decode_out"]).mean()
    assert rel < 0.05


def test_context_positions_rule():
    from acestep_jax.models.transformer import context_positions

    text_mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    item = np.asarray(context_positions(text_mask, 2, "item"))
    np.testing.assert_array_equal(item, [[0, 1, 2, 3, 4, 4, 5], [0, 1, 2, 3, 4, 2, 3]])
    batch = np.asarray(context_positions(text_mask, 2, "batch"))
    np.testing.assert_array_equal(batch, [[0, 1, 2, 3, 4, 4, 5], [0, 1, 2, 3, 4, 4, 5]])
    with pytest.raises(ValueError, match="context_positions"):
        TransformerConfig(context_positions="rows")


def test_cudnn_cross_attention_equals_the_einsum_form(monkeypatch):
    """``attention_impl="cudnn"`` (NVIDIA GPUs) hands the same masks to ``jax.nn.dot_product_attention``:
    run here with XLA's implementation of that call, it equals the einsum form, fully masked
    query rows (zero) and padded keys included."""
    from acestep_jax.models.transformer.attention import CrossAttention

    fused = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention",
                        lambda *a, implementation=None, **kw: fused(*a, implementation="xla", **kw))
    kw = {"dtype": jnp.float32, "param_dtype": jnp.float32}
    xla = CrossAttention(32, 4, 8, rngs=nnx.Rngs(0), **kw)
    cudnn = CrossAttention(32, 4, 8, rngs=nnx.Rngs(0), impl="cudnn", **kw)
    rng = np.random.default_rng(0)
    x, context = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((2, 6, 32), (2, 5, 32)))
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    context_mask = jnp.asarray([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0]])  # the second item sees no key at all
    no_rope = (jnp.ones((1, 8)), jnp.zeros((1, 8)))  # [S, D], broadcast over every position
    want = xla(x, mask, context, context_mask, no_rope, no_rope)
    got = cudnn(x, mask, context, context_mask, no_rope, no_rope)
    assert_close(got, want, rtol=1e-5, atol=1e-5, what="cross-attention, cudnn path")
    blank = np.asarray(got)[1]  # no key: every row is the output projection's bias alone
    assert np.abs(blank - blank[0]).max() == 0


def test_gpu_settings_apply_to_nvidia_gpus_only():
    from acestep_jax.models.transformer import gpu_transformer_settings

    settings = {"attention_impl": "cudnn", "unroll_blocks": True, "head_major_attention": True}
    assert gpu_transformer_settings("gpu", "cuda 12.8") == settings
    assert gpu_transformer_settings("cuda", training=True) == {"attention_impl": "cudnn", "head_major_attention": True}
    assert gpu_transformer_settings("gpu", "rocm 6.2") == gpu_transformer_settings("tpu") == {}
    assert gpu_transformer_settings() == {}  # these tests run on CPUs
    # chosen per device when loading: a saved config names none of them
    assert not set(TransformerConfig(**settings).to_dict()) & set(settings)
    with pytest.raises(ValueError, match="unroll_blocks runs without remat"):
        TransformerConfig(unroll_blocks=True, remat="full")
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        TransformerConfig(attention_impl="flash")


def test_the_transformer_as_gpus_load_it_matches_the_reference(golden, monkeypatch):
    """With every GPU setting (cuDNN cross-attention, run here through XLA's implementation of the
    same call; unrolled blocks; head-major linear attention) the golden decode and padded decode
    are reproduced as by the default form."""
    from acestep_jax.models.transformer import gpu_transformer_settings

    fused = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention",
                        lambda *a, implementation=None, **kw: fused(*a, implementation="xla", **kw))
    g = golden("transformer")
    cfg = TransformerConfig.from_dict(g.config, context_positions="batch", **gpu_transformer_settings("gpu", "cuda"))
    model, io = load_transformer(g.path("weights.safetensors"), cfg), g.io
    for mask, want in (("attention_mask", "decode_out"), ("attention_mask_padded", "decode_out_padded")):
        out = model.decode(io["hidden_states"], io[mask], io["encoder_hidden_states"], io["encoder_hidden_mask"],
                           io["timestep"])
        assert_close(out, io[want], rtol=1e-3, atol=1e-3, what=f"{want}, GPU settings")


def test_head_major_linear_attention_equals_the_default_form():
    """``head_major_attention`` (GPU loading) computes the same linear attention: padded frames,
    per-block query scales and low-rank adapters included."""
    from acestep_jax.models.transformer.attention import LinearSelfAttention
    from acestep_jax.models.transformer.embeddings import rope_tables

    kw = {"dtype": jnp.float32, "param_dtype": jnp.float32}
    default = LinearSelfAttention(32, 4, 8, rngs=nnx.Rngs(0), **kw)
    head_major = LinearSelfAttention(32, 4, 8, rngs=nnx.Rngs(0), head_major=True, **kw)
    rng = np.random.default_rng(0)
    for name in ("to_q", "to_v", "to_out"):  # the same adapters on both
        a, b = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((32, 3), (3, 32)))
        for module in (default, head_major):
            dense = getattr(module, name)
            dense.lora_a, dense.lora_b = nnx.LoRAParam(a), nnx.LoRAParam(b)
    x = jnp.asarray(rng.standard_normal((2, 6, 32)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], jnp.float32)
    rope = rope_tables(6, 8, 10_000.0)
    for q_scale in (None, jnp.float32(1.7)):
        assert_close(head_major(x, mask, rope, q_scale), default(x, mask, rope, q_scale),
                     what=f"head-major linear attention, q_scale {q_scale}")
