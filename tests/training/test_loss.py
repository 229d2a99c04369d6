"""The training objective: schedule, condition dropout, REPA (golden), gradients (finite differences)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acestep_jax.convert.transformer import load_transformer
from acestep_jax.models.transformer import ACEStepTransformer, TransformerConfig
from acestep_jax.presets import preset_config
from acestep_jax.training.config import DataSection, LossSection
from acestep_jax.training.data import collate, synthetic_examples
from acestep_jax.training.loss import (
    Draws,
    denoising_per_item,
    draw,
    drop_conditions,
    flow_matching_loss,
    map_timesteps,
    masked_repa_loss,
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
    z = draw(jax.random.PRNGKey(0), (20000, 1), cfg).z_timestep
    _, _, t, s = map_timesteps(z, cfg)
    tab_t, tab_s = shifted_schedule(1000, 3.0)
    idx = np.searchsorted(-tab_t, -np.asarray(t))
    np.testing.assert_array_equal(tab_t[idx], t)
    np.testing.assert_array_equal(tab_s[idx], s)
    # u = sigmoid(N(0,1)) is symmetric around 0.5, so the median index is ~500
    assert abs(np.median(idx) - 500) < 15
    u = jax.nn.sigmoid(z)
    np.testing.assert_array_equal(idx, np.clip((np.asarray(u) * 1000).astype(int), 0, 999))


def test_condition_dropout_rates():
    b = 4000
    batch = {
        "latents": jnp.zeros((b, 1)), "text_states": jnp.ones((b, 2, 3)), "text_mask": jnp.ones((b, 2)),
        "speaker": jnp.ones((b, 5)), "lyric_ids": jnp.ones((b, 4), jnp.int32), "lyric_mask": jnp.ones((b, 4)),
    }
    out = drop_conditions(batch, draw(jax.random.PRNGKey(1), (b, 1), LossSection()), LossSection())
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
        # items without SSL features are left out of the mean: only the first keeps its features
        first_only = np.where(np.arange(b) == 0, lengths, 0).astype(np.int32)
        one = masked_repa_loss(proj, frames, padded, first_only)
        alone = masked_repa_loss(proj[:1], frames[:1], padded[:1], lengths[:1])
        np.testing.assert_allclose(float(one), float(alone), rtol=1e-5)


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

    def __call__(self, x, mask, text, text_mask, speaker, lyric_ids, lyric_mask, t, *, return_repa=False, **kw):
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
    draws = draw(key, batch["latents"].shape, lcfg)
    loss, metrics = flow_matching_loss(model, batch, draws, lcfg)

    noise = np.asarray(draws.noise)
    timesteps, sigmas = map(np.asarray, map_timesteps(draws.z_timestep, lcfg)[2:])
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
    l2, m2 = flow_matching_loss(model, no_ssl, draws, lcfg)
    assert set(m2) == {"loss", "denoising_loss"} and float(l2) == pytest.approx(want, rel=1e-5)
    flow_matching_loss(model, no_ssl, draw(key, batch["latents"].shape, lcfg, train=False), lcfg)  # no dropout
    np.testing.assert_array_equal(np.asarray(model.calls[-1]["lyric_ids"]), batch["lyric_ids"])


def test_gradients_match_finite_differences():
    cfg = tiny_config()
    model = ACEStepTransformer(cfg, rngs=nnx.Rngs(1))
    batch = jax.tree.map(jnp.asarray, tiny_batch(cfg))
    graphdef, params = nnx.split(model)
    key = jax.random.PRNGKey(3)
    lcfg = LossSection()

    # one compiled function gives both the gradient and the perturbed losses
    draws = draw(key, batch["latents"].shape, lcfg)._replace(dropout=None)  # finite differences need one function
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: flow_matching_loss(nnx.merge(graphdef, p), batch, draws,
                                                                             lcfg)[0]))
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


# ----------------------------------------------------------------------------- the reference trainer (golden/train)
@pytest.fixture(scope="module")
def reference_step(golden):
    """The ``train/`` golden (the reference trainer's ``run_step``) on the ``transformer/`` model.

    Its batch pads prompts to the batch's longest, so conditions are placed the ``"batch"``
    way; the golden ran the lyric encoder in eval mode, so its dropout is off.
    """
    g, t = golden("train"), golden("transformer")
    cfg = TransformerConfig.from_dict(t.config, context_positions="batch")
    model = load_transformer(t.path("weights.safetensors"), cfg)
    grads = load_transformer(g.path("grads_total.safetensors"), cfg)  # the same layout changes as the weights
    e = g.extra
    lcfg = LossSection(
        num_train_timesteps=e["num_train_timesteps"], shift=e["shift"], logit_mean=e["logit_mean"],
        logit_std=e["logit_std"], ssl_coeff=e["ssl_coeff"], text_drop=e["drop_probs"]["text"],
        speaker_drop=e["drop_probs"]["speaker"], lyric_drop=e["drop_probs"]["lyric"], lyric_encoder_dropout=False,
    )
    return model, grads, g.io, e, lcfg


def _golden_draws(io, noise) -> Draws:
    return Draws(noise=noise, z_timestep=io["z_timestep"], u_text=io["u_text"], u_speaker=io["u_speaker"],
                 u_lyric=io["u_lyric"])


def _golden_examples(io, names) -> list[dict]:
    """The golden batch as unpadded examples, one per item."""
    out = []
    for i in range(io["latents"].shape[0]):
        ex = {
            "latents": io["latents"][i, ..., : int(io["attention_mask"][i].sum())],
            "text_states": io["text_hidden_states"][i, : int(io["text_attention_mask"][i].sum())],
            "speaker": io["speaker_embeds"][i],
            "lyric_ids": io["lyric_token_idx"][i, : int(io["lyric_mask"][i].sum())],
        }
        for name, prefix in zip(names, ("ssl_mert", "ssl_mhubert")):
            ex[f"ssl/{name}"] = io[f"{prefix}_{i}"]
        out.append(ex)
    return out


def _unpadded_batch(io, names) -> dict:
    batch = {
        "latents": io["latents"], "frame_mask": io["attention_mask"], "text_states": io["text_hidden_states"],
        "text_mask": io["text_attention_mask"], "speaker": io["speaker_embeds"],
        "lyric_ids": io["lyric_token_idx"], "lyric_mask": io["lyric_mask"],
    }
    for name, prefix in zip(names, ("ssl_mert", "ssl_mhubert")):
        batch[f"ssl/{name}"], batch[f"ssl_len/{name}"] = padded_items(io, prefix, io["latents"].shape[0])
    return batch


def _loss_and_grads(model, batch, draws, lcfg):
    graphdef, params = nnx.split(model)
    fn = jax.value_and_grad(lambda p: flow_matching_loss(nnx.merge(graphdef, p), batch, draws, lcfg), has_aux=True)
    (_, metrics), grads = jax.jit(fn)(params)
    return metrics, grads


def _assert_reference_objective(metrics, grads, want_grads, io):
    np.testing.assert_allclose(float(metrics["denoising_loss"]), io["denoising_loss"], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mert_loss"]), io["mert_loss"], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["m-hubert_loss"]), io["mhubert_loss"], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), io["total_loss"], rtol=1e-5)
    got = dict(nnx.to_flat_state(grads))
    want = dict(nnx.to_flat_state(nnx.state(want_grads)))
    assert set(got) == set(want)
    scale = max(float(np.abs(np.asarray(v[...])).max()) for v in want.values())
    worst = max(float(np.abs(np.asarray(got[p][...]) - np.asarray(want[p][...])).max()) for p in want)
    assert worst <= 1e-4 * scale, f"gradient off by {worst / scale:.2e} of the largest gradient"


def test_schedule_and_timestep_mapping_match_golden(reference_step):
    *_, io, _e, lcfg = reference_step
    tab_t, tab_s = shifted_schedule(lcfg.num_train_timesteps, lcfg.shift)
    np.testing.assert_array_equal(tab_t, io["sched_timesteps"])
    np.testing.assert_array_equal(tab_s, io["sched_sigmas"])
    for got, key in zip(map_timesteps(jnp.asarray(io["map_z"]), lcfg), ("map_u", "map_indices", "map_timesteps",
                                                                         "map_sigmas")):
        np.testing.assert_array_equal(np.asarray(got), io[key], err_msg=key)


def test_condition_dropout_matches_golden(reference_step):
    *_, io, _e, lcfg = reference_step
    batch = {"text_states": io["text_hidden_states"], "speaker": io["speaker_embeds"],
             "lyric_ids": io["lyric_token_idx"], "lyric_mask": io["lyric_mask"]}
    names = {"text_states": "text_hidden_states", "speaker": "speaker_embeds", "lyric_ids": "lyric_token_idx",
             "lyric_mask": "lyric_mask"}
    for r in range(io["drop_u_text"].shape[0]):
        u = {k: io[f"drop_u_{k}"][r] for k in ("text", "speaker", "lyric")}
        draws = Draws(noise=None, z_timestep=None, u_text=u["text"], u_speaker=u["speaker"], u_lyric=u["lyric"])
        out = drop_conditions(batch, draws, lcfg)
        for ours, theirs in names.items():
            np.testing.assert_array_equal(np.asarray(out[ours]), io[f"drop_{theirs}"][r], err_msg=f"{ours} row {r}")


def test_denoising_reduction_counts_valid_frames(reference_step):
    """On a padded mask the per-item error is averaged over the valid frames only (the
    golden's ``padded_denoising_count_norm``), not the reference's literal ``mse * mask.mean``."""
    *_, io, _e, _lcfg = reference_step
    per_item = denoising_per_item(io["padded_model_pred"], io["latents"], io["padded_attention_mask"])
    np.testing.assert_allclose(float(jnp.mean(per_item)), io["padded_denoising_count_norm"], rtol=1e-5)


def test_reference_objective_unpadded(reference_step):
    model, want_grads, io, _e, lcfg = reference_step
    metrics, grads = _loss_and_grads(model, _unpadded_batch(io, model.cfg.ssl_names),
                                     _golden_draws(io, io["noise"]), lcfg)
    _assert_reference_objective(metrics, grads, want_grads, io)


def test_reference_objective_with_the_gpu_training_settings(reference_step, golden, monkeypatch):
    """The trainer's settings on NVIDIA GPUs (cuDNN cross-attention, run here through XLA's
    implementation of the same call; head-major linear attention) give the reference's loss and
    gradients: the fused attention's backward, and the masked row that evens an odd condition
    length for it, change nothing."""
    from acestep_jax.models.transformer import gpu_transformer_settings

    fused = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention",
                        lambda *a, implementation=None, **kw: fused(*a, implementation="xla", **kw))
    _, want_grads, io, _e, lcfg = reference_step
    settings = gpu_transformer_settings("gpu", "cuda", training=True)
    assert settings == {"attention_impl": "cudnn", "head_major_attention": True}
    t = golden("transformer")
    model = load_transformer(t.path("weights.safetensors"),
                             TransformerConfig.from_dict(t.config, context_positions="batch", **settings))
    batch = _unpadded_batch(io, model.cfg.ssl_names)
    condition_rows = 1 + batch["text_states"].shape[1] + batch["lyric_ids"].shape[1]
    assert condition_rows % 2, "the golden's condition length is even: the evening row goes untested"
    metrics, grads = _loss_and_grads(model, batch, _golden_draws(io, io["noise"]), lcfg)
    _assert_reference_objective(metrics, grads, want_grads, io)


def test_reference_objective_through_collate(reference_step):
    """The same batch padded by ``collate`` (frames to the golden's bucket, prompts, lyrics and
    SSL features to multiples of 16) gives the same losses and gradients."""
    model, want_grads, io, e, lcfg = reference_step
    examples = _golden_examples(io, model.cfg.ssl_names)
    batch = collate(examples, DataSection(frame_buckets=(e["bucket_frames"],), pad_multiple=16), model.cfg.ssl_names)
    assert batch["latents"].shape[-1] == e["bucket_frames"] and batch["text_mask"].min() == 0
    assert batch["lyric_mask"].shape[1] > io["lyric_mask"].shape[1]
    noise = np.concatenate([io["noise"], io["noise_bucket_tail"]], axis=-1)
    metrics, grads = _loss_and_grads(model, batch, _golden_draws(io, noise), lcfg)
    _assert_reference_objective(metrics, grads, want_grads, io)


def _item_draws(rng, ex) -> dict:
    """One item's draws (noise over its own frames)."""
    return {"noise": rng.standard_normal(ex["latents"].shape).astype(np.float32),
            "z": np.float32(rng.standard_normal()), "u": rng.uniform(size=3).astype(np.float32)}


def _objective(model, examples, draws, data: DataSection):
    """Loss and gradients of ``examples`` collated with ``data``, each item with its own draws
    (noise zero-padded to the batch's frames)."""
    batch = collate(examples, data, model.cfg.ssl_names)
    t = batch["latents"].shape[-1]
    noise = np.stack([np.pad(d["noise"], [(0, 0), (0, 0), (0, t - d["noise"].shape[-1])]) for d in draws])
    u = np.stack([d["u"] for d in draws])
    d = Draws(noise=noise, z_timestep=np.stack([d["z"] for d in draws]), u_text=u[:, 0], u_speaker=u[:, 1],
              u_lyric=u[:, 2])
    metrics, grads = _loss_and_grads(model, batch, d, LossSection(lyric_encoder_dropout=False))
    return float(metrics["loss"]), jax.tree.map(np.asarray, grads)


@functools.cache
def _invariance_setup():
    """A small model, two items with their draws, and their objective collated without padding."""
    cfg = tiny_config()
    model = ACEStepTransformer(cfg, rngs=nnx.Rngs(2))
    kw = {"text_dim": cfg.text_embedding_dim, "lyric_vocab": cfg.lyric_encoder_vocab_size,
          "ssl_dims": dict(zip(cfg.ssl_names, cfg.ssl_latent_dims)), "frames": (6, 14)}
    items = synthetic_examples(2, seed=0, **kw)
    draws = [_item_draws(np.random.default_rng(i), ex) for i, ex in enumerate(items)]
    return model, kw, items, draws, _objective(model, items, draws, DataSection(pad_multiple=1))


@pytest.mark.slow
@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(others=st.integers(1, 3), multiple=st.sampled_from([8, 16, 32]), extra_frames=st.integers(1, 20),
       seed=st.integers(0, 99))
def test_padding_and_batch_change_no_item_objective(others, multiple, extra_frames, seed):
    """Items padded to random widths and batched with random others contribute exactly what they
    contribute alone: ``n_all * L(all) = n_items * L(items) + n_others * L(others)``, gradients alike."""
    model, kw, items, item_draws, (l_items, g_items) = _invariance_setup()
    rest = synthetic_examples(others, seed=seed + 1, **kw)
    rng = np.random.default_rng(seed)
    rest_draws = [_item_draws(rng, ex) for ex in rest]
    longest = max(e["latents"].shape[-1] for e in items + rest)
    loose = DataSection(pad_multiple=multiple, frame_buckets=(longest + extra_frames,))
    order = rng.permutation(len(items) + len(rest))
    pairs = [(list(items) + rest)[i] for i in order], [(item_draws + rest_draws)[i] for i in order]
    l_rest, g_rest = _objective(model, rest, rest_draws, DataSection(pad_multiple=1))
    l_all, g_all = _objective(model, *pairs, loose)
    n_i, n_r = len(items), len(rest)
    np.testing.assert_allclose((n_i + n_r) * l_all, n_i * l_items + n_r * l_rest, rtol=1e-5)
    combined = jax.tree.map(lambda a, b: (n_i * a + n_r * b) / (n_i + n_r), g_items, g_rest)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g_all))
    worst = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g_all), jax.tree.leaves(combined)))
    assert worst <= 1e-5 * scale, f"gradients moved by {worst / scale:.2e} of the largest"
