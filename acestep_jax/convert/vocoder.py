"""Reference ``music_vocoder`` (``ADaMoSHiFiGANV1``) state dict → :class:`Vocoder` parameters.

The head's convolutions are weight-normalised in the reference (``weight_g`` of
shape ``[dim0, 1, 1]`` and ``weight_v``; PyTorch's default ``dim=0``, which is the
output channel of a ``Conv1d`` and the *input* channel of a ``ConvTranspose1d``).
Conversion folds them into one kernel ``g * v / ||v||`` (the norm taken over every
axis but the first). A checkpoint whose weight norm was already removed (a plain
``weight``) is accepted in the same place: each folded rule lists ``weight`` as
the alternative to both ``weight_g`` and ``weight_v``, and a pair of equal shapes is
recognised as a plain weight. Export writes the reference's ``weight_g`` /
``weight_v`` form with ``g = ||w||`` and ``v = w`` (which refolds to ``w`` exactly).
The mel front end's buffers (``mel_transform.*``: Hann window and filterbank) are
recomputed, not read.
"""

from __future__ import annotations

import os

import numpy as np

from acestep_jax.codec.config import VocoderConfig
from acestep_jax.codec.vocoder import Vocoder
from acestep_jax.convert.checkpoint import Component
from acestep_jax.convert.core import (
    Rule,
    TensorSource,
    Transform,
    conv_t,
    convert_into,
    fold_weight_norm,
    identity,
    linear_t,
    open_source,
    rule,
)
from acestep_jax.nn import abstract_model

MEL_BUFFERS = ("mel_transform.spectrogram.window", "mel_transform.mel_scale.fb")
"""Reference buffers that conversion ignores (recomputed by :mod:`acestep_jax.codec.logmel`)."""


def _unfold(w):
    w = np.asarray(w)
    g = np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=tuple(range(1, w.ndim)), keepdims=True)).astype(
        w.dtype
    )
    return g, w


def _weight_norm(layout: Transform) -> Transform:
    return Transform(
        lambda g, v: layout(fold_weight_norm(g, v)),
        lambda k: _unfold(layout.inverse(k)),
        name=f"weight_norm({layout.__name__})",
    )


_transposed_t = Transform(
    lambda w: w.transpose(2, 0, 1), lambda k: k.transpose(1, 2, 0), name="conv_transpose_t"
)
"""``ConvTranspose1d.weight [in, out, k]`` ↔ kernel ``[k, in, out]``."""

_WN_CONV = _weight_norm(conv_t)
_WN_TRANSPOSED = _weight_norm(_transposed_t)


def _wn(src: str, dst: str, combine: Transform) -> list[Rule]:
    sources = ((f"{src}.weight_g", f"{src}.weight"), (f"{src}.weight_v", f"{src}.weight"))
    return [Rule(f"{dst}/kernel", sources, combine), rule(f"{dst}/bias", f"{src}.bias")]


def _conv(src: str, dst: str) -> list[Rule]:
    return [rule(f"{dst}/kernel", f"{src}.weight", conv_t), rule(f"{dst}/bias", f"{src}.bias")]


def _ln(src: str, dst: str) -> list[Rule]:
    return [rule(f"{dst}/scale", f"{src}.weight"), rule(f"{dst}/bias", f"{src}.bias")]


def vocoder_rules(cfg: VocoderConfig) -> list[Rule]:
    """Every parameter of :class:`Vocoder` with the reference key(s) it comes from."""
    rules = _conv("backbone.channel_layers.0.0", "backbone/channel_layers/0/0")
    rules += _ln("backbone.channel_layers.0.1", "backbone/channel_layers/0/1")
    for i in range(1, len(cfg.dims)):
        rules += _ln(f"backbone.channel_layers.{i}.0", f"backbone/channel_layers/{i}/0")
        rules += _conv(f"backbone.channel_layers.{i}.1", f"backbone/channel_layers/{i}/1")
    for i, depth in enumerate(cfg.depths):
        for j in range(depth):
            src, dst = f"backbone.stages.{i}.{j}", f"backbone/stages/{i}/{j}"
            rules += _conv(f"{src}.dwconv", f"{dst}/dwconv") + _ln(f"{src}.norm", f"{dst}/norm")
            for name in ("pwconv1", "pwconv2"):
                rules += [
                    rule(f"{dst}/{name}/kernel", f"{src}.{name}.weight", linear_t),
                    rule(f"{dst}/{name}/bias", f"{src}.{name}.bias"),
                ]
            rules.append(rule(f"{dst}/gamma", f"{src}.gamma", identity))
    rules += _ln("backbone.norm", "backbone/norm")
    rules += _wn("head.conv_pre", "head/conv_pre", _WN_CONV)
    for i in range(len(cfg.upsample_rates)):
        rules += _wn(f"head.ups.{i}", f"head/ups/{i}", _WN_TRANSPOSED)
    n_blocks = len(cfg.upsample_rates) * len(cfg.resblock_kernel_sizes)
    for b in range(n_blocks):
        dil = cfg.resblock_dilation_sizes[b % len(cfg.resblock_kernel_sizes)]
        for part in ("convs1", "convs2"):
            for m in range(len(dil)):
                rules += _wn(f"head.resblocks.{b}.{part}.{m}", f"head/resblocks/{b}/{part}/{m}", _WN_CONV)
    rules += _wn("head.conv_post", "head/conv_post", _WN_CONV)
    return rules


def load_vocoder(
    path: str | os.PathLike | TensorSource, cfg: VocoderConfig, *, progress: bool = False
) -> Vocoder:
    """A :class:`Vocoder` with the weights of a reference ``ADaMoSHiFiGANV1`` safetensors file or folder."""
    abstract = abstract_model(lambda r: Vocoder(cfg, rngs=r))
    return convert_into(
        abstract,
        vocoder_rules(cfg),
        open_source(path),
        ignore=MEL_BUFFERS,
        what="vocoder checkpoint",
        progress=progress,
    )


VOCODER = Component(
    name="vocoder",
    hf_folder="music_vocoder",
    config_from_dict=VocoderConfig.from_dict,
    build=Vocoder,
    rules=vocoder_rules,
    ignore=MEL_BUFFERS,
)
"""The vocoder component of an ACE-Step checkpoint."""
