"""The training objective: schedule, condition dropout, REPA (golden), gradients (finite differences)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from acestep_jax.convert.transformer import load_transformer
from acestep_jax.models.transformer import ACEStepTransformer, TransformerConfig, repa_loss
from acestep_jax.presets import preset_config
from acestep_jax.training.config import DataSection, LossSection
from acestep_jax.training.data import collate, synthetic_examples
from acestep_jax.training.loss import (
    drop_conditions,
    flow_matching_loss,
    masked_repa_loss,
    sample_timesteps,
    shifted_schedule,
)
from tests.helpers import padded_items


def test_shifted_schedule_matches_reference_formula():
    t, s = shifted_schedule(1000, 3.0)
    assert t.dtype == s.dtype == np.float32 and t.shape == (1000,)
    base = np.linspace(1.0, 1000.0, 1000)[::-1] / 1000
    np.testing.assert_allclose(s, 3 * base / (1 + 2 * base), rtol=1e-6)
    np.testing.assert_allclose(t, 1000 * s, rtol=1e-6)
    assert s[0] == 1.0 and np.all(np.diff(s) < 0)


def test_logit_normal_timesteps():
    cfg = LossSection()
    t, s = sample_timesteps(jax.random.PRNGKey(0), 20000, cfg)
    tab_t, tab_s = shifted_schedule(1000, 3.0)
    idx = np.searchsorted(-tab_t, -np.asarray(t))
    np.testing.assert_array_equal(tab_t[idx], t)
    np.testing.assert_array_equal(tab_s[idx], s)
    # u = sigmoid(N(0,1)) is symmetric around 0.5, so the median index is ~500
    assert abs(np.median(idx) - 500) < 15
    u = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(0), (20000,)))
    np.testing.assert_array_equal(idx, np.clip((np.asarray(u) * 1000).astype(int), 0, 999))


def test_condition_dropout_rates():
    b = 4000
    batch = {
        "latents": jnp.zeros((b, 1)), "text_states": jnp.ones((b, 2, 3)), "text_mask": jnp.ones((b, 2)),
        "speaker": jnp.ones((b, 5)), "lyric_ids": jnp.ones((b, 4), jnp.int32), "lyric_mask": jnp.ones((b, 4)),
    }
    out = drop_conditions(jax.random.PRNGKey(1), batch, LossSection())
    text_kept = np.asarray(out["text_states"]).any((1, 2))
    assert abs(1 - text_kept.mean() - 0.15) < 0.03
    assert abs(1 - np.asarray(out["speaker"]).any(1).mean() - 0.5) < 0.03
    lyr = np.asarray(out["lyric_ids"]).any(1)
    assert abs(1 - lyr.mean() - 0.15) < 0.03
    np.testing.assert_array_equal(lyr, np.asarray(out["lyric_mask"]).any(1))
    np.testing.assert_array_equal(np.asarray(out["text_mask"]), 1)  # prompt mask is kept, as the reference
    assert not np.array_equal(text_kept, lyr)  # independent draws


def test_repa_losses_match_golden(golden):
    g = golden("transformer")
    io, extra = g.io, g.extra
    model = load_transformer(g.path("weights.safetensors"), TransformerConfig.from_dict(g.config))
    _, projected = model.decode(
        io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
        io["encoder_hidden_mask"], io["timestep"], return_repa=True,
    )
    b, t = io["hidden_states"].shape[0], io["hidden_states"].shape[-1]
    frames = jnp.full((b,), t)
    for proj, prefix, name in zip(projected, ("ssl_mert", "ssl_mhubert"), model.cfg.ssl_names):
        padded, lengths = padded_items(io, prefix, b, extra=5)
        want = extra["repa_proj_losses"][name]
        got = masked_repa_loss(proj, frames, padded, lengths)
        np.testing.assert_allclose(float(got), want, rtol=1e-4, atol=1e-5)
        # padding the latent frames (garbage past the valid length) does not change the loss
        junk = jnp.concatenate([proj, 100 * jnp.ones_like(proj[:, :7])], axis=1)
        np.testing.assert_allclose(float(masked_repa_loss(junk, frames, padded, lengths)), want,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(repa_loss(proj, padded, lengths)), want, rtol=1e-4, atol=1e-5)
        # items without SSL features are left out of the mean: only the first keeps its features
        first_only = np.where(np.arange(b) == 0, lengths, 0).astype(np.int32)
        one = masked_repa_loss(proj, frames, padded, first_only)
        np.testing.assert_allclose(float(one), float(repa_loss(proj[:1], padded[:1], lengths[:1])), rtol=1e-5)


def tiny_config(**kw) -> TransformerConfig:
    base = preset_config("tiny", "transformer").to_dict()
    base.update(num_layers=2, ssl_encoder_depths=[0, 1])
    base["lyric_encoder"] = dict(base["lyric_encoder"], num_blocks=1)
    return TransformerConfig.from_dict(base, **kw)


def tiny_batch(cfg: TransformerConfig, n=2, frames=12):
    exs = synthetic_examples(n, text_dim=cfg.text_embedding_dim, lyric_vocab=cfg.lyric_encoder_vocab_size,
                             ssl_dims=dict(zip(cfg.ssl_names, cfg.ssl_latent_dims)), frames=(frames - 3, frames))
    return collate(exs, DataSection(pad_multiple=8, max_frames=frames), cfg.ssl_names)


class StubModel:
    """Stands in for the transformer: a fixed velocity and fixed projector outputs."""

    def __init__(self, cfg, velocity, projected):
        self.cfg, self.velocity, self.projected, self.calls = cfg, velocity, projected, []

    def __call__(self, x, mask, text, text_mask, speaker, lyric_ids, lyric_mask, t, *, return_repa=False):
        self.calls.append({"x": x, "text": text, "speaker": speaker, "lyric_ids": lyric_ids, "t": t})
        return (self.velocity, self.projected) if return_repa else self.velocity


def test_denoising_loss_formula_and_masking():
    cfg = tiny_config()
    batch = tiny_batch(cfg, n=3)
    b, t = batch["frame_mask"].shape
    assert batch["frame_mask"].min() == 0  # some items are padded
    rng = np.random.default_rng(0)
    velocity = rng.standard_normal(batch["latents"].shape).astype(np.float32)
    projected = [rng.standard_normal((b, t, d)).astype(np.float32) for d in cfg.ssl_latent_dims]
    model = StubModel(cfg, velocity, projected)
    key = jax.random.PRNGKey(7)
    lcfg = LossSection()
    loss, metrics = flow_matching_loss(model, batch, key, lcfg)

    k_noise, k_t, _ = jax.random.split(key, 3)
    noise = np.asarray(jax.random.normal(k_noise, batch["latents"].shape))
    timesteps, sigmas = map(np.asarray, sample_timesteps(k_t, b, lcfg))
    s = sigmas[:, None, None, None]
    x0 = batch["latents"]
    noisy = s * noise + (1 - s) * x0
    call = model.calls[0]
    np.testing.assert_allclose(np.asarray(call["x"]), noisy, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(call["t"]), timesteps)
    err = (noisy - s * velocity - x0) ** 2
    m = batch["frame_mask"][:, None, None, :]
    want = np.mean([(err[i] * m[i]).sum() / (m[i].sum() * 8 * 16) for i in range(b)])
    np.testing.assert_allclose(float(metrics["denoising_loss"]), want, rtol=1e-5)

    lengths = batch["frame_mask"].sum(1)
    repa = [float(masked_repa_loss(p, lengths, batch[f"ssl/{n}"], batch[f"ssl_len/{n}"]))
            for p, n in zip(projected, cfg.ssl_names)]
    assert metrics["mert_loss"] == pytest.approx(repa[0]) and metrics["m-hubert_loss"] == pytest.approx(repa[1])
    np.testing.assert_allclose(float(loss), want + lcfg.ssl_coeff * np.mean(repa), rtol=1e-5)

    no_ssl = {k: v for k, v in batch.items() if not k.startswith("ssl")}
    l2, m2 = flow_matching_loss(model, no_ssl, key, lcfg)
    assert set(m2) == {"loss", "denoising_loss"} and float(l2) == pytest.approx(want, rel=1e-5)
    flow_matching_loss(model, no_ssl, key, lcfg, train=False)  # no condition dropout
    np.testing.assert_array_equal(np.asarray(model.calls[-1]["lyric_ids"]), batch["lyric_ids"])


def test_gradients_match_finite_differences():
    cfg = tiny_config()
    model = ACEStepTransformer(cfg, rngs=nnx.Rngs(1))
    batch = jax.tree.map(jnp.asarray, tiny_batch(cfg))
    graphdef, params = nnx.split(model)
    key = jax.random.PRNGKey(3)
    lcfg = LossSection()

    # one compiled function gives both the gradient and the perturbed losses
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: flow_matching_loss(nnx.merge(graphdef, p), batch, key, lcfg)[0]))
    _, grads = value_and_grad(params)
    flat_p = dict(nnx.to_flat_state(params))
    flat_g = dict(nnx.to_flat_state(grads))
    picks = [("blocks", "attn", "to_q", "kernel"), ("blocks", "ff", "dw_gate"), ("final_layer",),
             ("projectors", 1), ("lyric_embs",), ("genre_embedder",)]
    checked = 0
    for prefix in picks:
        path = next(p for p in flat_g if tuple(p[: len(prefix)]) == prefix)
        g = np.asarray(flat_g[path][...])
        idx = np.unravel_index(np.argmax(np.abs(g)), g.shape)
        eps = 1e-2 * max(1.0, float(np.abs(np.asarray(flat_p[path][...])[idx])))

        def at(delta, path=path, idx=idx):
            value = flat_p[path][...]
            moved = dict(flat_p)
            moved[path] = flat_p[path].replace(value.at[idx].add(delta))
            return float(value_and_grad(nnx.from_flat_state(moved))[0])

        fd = (at(eps) - at(-eps)) / (2 * eps)
        np.testing.assert_allclose(g[idx], fd, rtol=3e-2, atol=2e-3, err_msg="/".join(map(str, path)))
        checked += 1
    assert checked == len(picks)
