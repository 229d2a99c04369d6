"""The reference's training objective: flow matching with logit-normal timesteps, condition
dropout for classifier-free guidance, and REPA projection losses.

Batches are dicts of arrays (see :mod:`acestep_jax.training.data`):
``latents [B, 8, 16, T]``, ``frame_mask [B, T]``, ``text_states [B, Lt, Dt]``,
``text_mask [B, Lt]``, ``speaker [B, 512]``, ``lyric_ids [B, Ll]``, ``lyric_mask [B, Ll]``
and optionally ``ssl/<name> [B, S, D]`` with ``ssl_len/<name> [B]`` per REPA target.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from acestep_jax.training.config import LossSection


def shifted_schedule(num_train_timesteps: int = 1000, shift: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The training scheduler's ``(timesteps, sigmas)`` tables (float32, descending from 1000 / 1.0).

    ``sigma = shift * s / (1 + (shift - 1) * s)`` for ``s`` on ``1/N .. 1``; ``timestep = N * sigma``.
    """
    n = num_train_timesteps
    s = np.linspace(1.0, n, n, dtype=np.float32)[::-1] / np.float32(n)
    sigmas = (np.float32(shift) * s / (1 + (np.float32(shift) - 1) * s)).astype(np.float32)
    return (sigmas * np.float32(n)).astype(np.float32), sigmas


class Draws(NamedTuple):
    """Every random value of one training step, so a step can replay recorded draws.

    ``noise [B, 8, 16, T]``; ``z_timestep [B]`` standard normals (→ :func:`map_timesteps`);
    ``u_text``, ``u_speaker``, ``u_lyric [B]`` uniforms on [0, 1): a condition is dropped
    where its draw is below its probability; ``dropout``: the PRNG key of the lyric
    encoder's dropout (``None``: off).
    """

    noise: jax.Array
    z_timestep: jax.Array
    u_text: jax.Array
    u_speaker: jax.Array
    u_lyric: jax.Array
    dropout: jax.Array | None = None


def draw(key: jax.Array, latents_shape: tuple[int, ...], cfg: LossSection, *, train: bool = True) -> Draws:
    """Fresh draws for a batch of ``latents_shape``. Without ``train`` no condition is dropped
    and the lyric encoder runs without dropout (evaluation)."""
    k_noise, k_t, k_text, k_spk, k_lyr, k_drop = jax.random.split(key, 6)
    b = latents_shape[0]
    uniform = (lambda k: jax.random.uniform(k, (b,))) if train else (lambda k: jnp.ones((b,)))
    return Draws(
        noise=jax.random.normal(k_noise, latents_shape, jnp.float32),
        z_timestep=jax.random.normal(k_t, (b,), jnp.float32),
        u_text=uniform(k_text), u_speaker=uniform(k_spk), u_lyric=uniform(k_lyr),
        dropout=k_drop if train and cfg.lyric_encoder_dropout else None,
    )


def map_timesteps(z: jax.Array, cfg: LossSection) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Logit-normal timesteps from standard normals ``z``: ``u = sigmoid(mean + std * z)``, table
    index ``floor(u * N)``; returns ``(u, indices, timesteps on the 0..1000 scale, sigmas)``."""
    timesteps, sigmas = shifted_schedule(cfg.num_train_timesteps, cfg.shift)
    u = jax.nn.sigmoid(cfg.logit_mean + cfg.logit_std * z.astype(jnp.float32))
    idx = jnp.clip((u * cfg.num_train_timesteps).astype(jnp.int32), 0, cfg.num_train_timesteps - 1)
    return u, idx, jnp.asarray(timesteps)[idx], jnp.asarray(sigmas)[idx]


def drop_conditions(batch: dict, draws: Draws, cfg: LossSection) -> dict:
    """Zero conditions per item for CFG training, as the reference does.

    Prompt states are zeroed where ``u_text < text_drop`` (their mask is kept), the speaker
    embedding where ``u_speaker < speaker_drop``, lyric ids and lyric mask together where
    ``u_lyric < lyric_drop``.
    """
    text_keep, spk_keep, lyr_keep = (
        draws.u_text >= cfg.text_drop, draws.u_speaker >= cfg.speaker_drop, draws.u_lyric >= cfg.lyric_drop
    )
    out = dict(batch)
    out["text_states"] = jnp.where(text_keep[:, None, None], batch["text_states"], 0)
    out["speaker"] = jnp.where(spk_keep[:, None], batch["speaker"], 0)
    out["lyric_ids"] = jnp.where(lyr_keep[:, None], batch["lyric_ids"], 0)
    out["lyric_mask"] = jnp.where(lyr_keep[:, None], batch["lyric_mask"], 0)
    return out


def _resample(x: jax.Array, in_len: jax.Array, out_len: jax.Array, max_len: int) -> jax.Array:
    """Linear resampling (half-pixel centres) of the first ``in_len`` frames of ``x [T, D]`` to
    ``out_len`` frames, padded to ``max_len``."""
    i = jnp.arange(max_len, dtype=jnp.float32)
    in_len_f = in_len.astype(jnp.float32)
    src = jnp.maximum((i + 0.5) * (in_len_f / jnp.maximum(out_len, 1).astype(jnp.float32)) - 0.5, 0.0)
    last = jnp.maximum(in_len - 1, 0)
    lo = jnp.minimum(jnp.floor(src).astype(jnp.int32), last)
    hi = jnp.minimum(lo + 1, last)
    w = (src - lo)[:, None]
    return x[lo] * (1 - w) + x[hi] * w


def masked_repa_loss(projected, frame_lengths, ssl, ssl_lengths) -> jax.Array:
    """REPA cosine loss with padding on both sides.

    The first ``frame_lengths[b]`` frames of ``projected [B, T, D]`` are resampled to
    ``ssl_lengths[b]`` frames and compared with ``ssl [B, S, D]``; per item the loss is the mean
    ``1 - cos`` over its SSL frames, and the result the mean over items that have SSL features
    (``ssl_lengths > 0``). Without padding this is the reference's projection loss.
    """
    max_len = ssl.shape[1]

    def one(p, t, z, n):
        z_tilde = _resample(p.astype(jnp.float32), t, n, max_len)
        z = z.astype(jnp.float32)
        unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        a, b = unit(z), unit(z_tilde)
        cos = jnp.sum(a * b, -1) / jnp.sqrt((jnp.sum(a * a, -1) + 1e-12) * (jnp.sum(b * b, -1) + 1e-12))
        valid = jnp.arange(max_len) < n
        return jnp.sum(jnp.where(valid, 1 - cos, 0.0)) / jnp.maximum(n, 1)

    per_item = jax.vmap(one)(projected, frame_lengths, ssl, ssl_lengths)
    has = (ssl_lengths > 0).astype(jnp.float32)
    return jnp.sum(per_item * has) / jnp.maximum(jnp.sum(has), 1.0)


def ssl_targets(batch: dict, ssl_names) -> list[str]:
    """Names of ``ssl_names`` for which the batch carries SSL features."""
    return [n for n in ssl_names if f"ssl/{n}" in batch]


def denoising_per_item(x0_hat: jax.Array, x0: jax.Array, frame_mask: jax.Array) -> jax.Array:
    """Per item, the mean squared error of ``x0_hat`` against ``x0 [B, C, H, T]`` over the
    valid frames of ``frame_mask [B, T]`` (the reference's ``mse.mean(1)`` without padding)."""
    b = x0.shape[0]
    m = jnp.broadcast_to(frame_mask[:, None, None, :].astype(jnp.float32), x0.shape)
    sq = jnp.square((x0_hat - x0) * m).reshape(b, -1)
    return jnp.sum(sq, 1) / jnp.maximum(jnp.sum(m.reshape(b, -1), 1), 1.0)


def flow_matching_loss(model, batch: dict, draws: Draws, cfg: LossSection):
    """Loss of one micro-batch with the given :class:`Draws`; returns ``(loss, metrics)``.

    Conditions are dropped (:func:`drop_conditions`), then ``x_t = sigma * noise +
    (1 - sigma) * x0``; the model's velocity ``v`` gives ``x0_hat = x_t - sigma * v``, and
    the denoising loss is the mean squared error of ``x0_hat`` against ``x0`` over each
    item's valid frames, averaged over items. REPA losses (mean over the SSL targets
    present) are added with weight ``ssl_coeff``. Padded frames are isolated
    (``isolate_padding``) and condition positions follow the model's
    ``context_positions``, so padding a batch changes nothing.
    """
    x0 = batch["latents"].astype(jnp.float32)
    batch = drop_conditions(batch, draws, cfg)
    _, _, timesteps, sigmas = map_timesteps(draws.z_timestep, cfg)
    s = sigmas[:, None, None, None]
    noisy = s * draws.noise.astype(jnp.float32) + (1.0 - s) * x0

    names = ssl_targets(batch, model.cfg.ssl_names)
    frame_mask = batch["frame_mask"].astype(jnp.float32)
    out = model(
        noisy, frame_mask, batch["text_states"], batch["text_mask"], batch["speaker"],
        batch["lyric_ids"], batch["lyric_mask"], timesteps, return_repa=bool(names),
        isolate_padding=True, dropout_key=draws.dropout,
    )
    pred, projected = out if names else (out, [])
    denoise = jnp.mean(denoising_per_item(noisy - s * pred.astype(jnp.float32), x0, frame_mask))

    metrics = {"denoising_loss": denoise}
    loss = denoise
    if names:
        frame_lengths = jnp.sum(frame_mask, 1).astype(jnp.int32)
        by_name = dict(zip(model.cfg.ssl_names, projected))
        proj = []
        for n in names:
            v = masked_repa_loss(by_name[n], frame_lengths, batch[f"ssl/{n}"], batch[f"ssl_len/{n}"])
            metrics[f"{n}_loss"] = v
            proj.append(v)
        loss = loss + cfg.ssl_coeff * sum(proj) / len(proj)
    metrics["loss"] = loss
    return loss, metrics
