"""Reference ``music_dcae_f8c8`` (diffusers ``AutoencoderDC``) state dict → :class:`DCAE` parameters."""

from __future__ import annotations

import os

from acestep_jax.codec.config import DCAEConfig
from acestep_jax.codec.dcae import DCAE as DCAEModel
from acestep_jax.convert.checkpoint import Component
from acestep_jax.convert.core import (
    Rule,
    TensorSource,
    conv_t,
    convert_into,
    linear_t,
    open_source,
    read_json,
    rule,
)
from acestep_jax.nn import abstract_model


def _conv(src: str, dst: str, bias: bool = True) -> list[Rule]:
    rules = [rule(f"{dst}/kernel", f"{src}.weight", conv_t)]
    if bias:
        rules.append(rule(f"{dst}/bias", f"{src}.bias"))
    return rules


def _norm(src: str, dst: str) -> list[Rule]:
    return [rule(f"{dst}/scale", f"{src}.weight"), rule(f"{dst}/bias", f"{src}.bias")]


def _block(kind: str, src: str, dst: str, scales) -> list[Rule]:
    if kind == "ResBlock":
        return (
            _conv(f"{src}.conv1", f"{dst}/conv1")
            + _conv(f"{src}.conv2", f"{dst}/conv2", bias=False)
            + _norm(f"{src}.norm", f"{dst}/norm")
        )
    rules = [
        rule(f"{dst}/attn/{n}/kernel", f"{src}.attn.{n}.weight", linear_t)
        for n in ("to_q", "to_k", "to_v", "to_out")
    ]
    for s in range(len(scales)):
        for part in ("proj_in", "proj_out"):
            rules += _conv(
                f"{src}.attn.to_qkv_multiscale.{s}.{part}",
                f"{dst}/attn/to_qkv_multiscale/{s}/{part}",
                bias=False,
            )
    rules += _norm(f"{src}.attn.norm_out", f"{dst}/attn/norm_out")
    rules += _conv(f"{src}.conv_out.conv_inverted", f"{dst}/conv_out/conv_inverted")
    rules += _conv(f"{src}.conv_out.conv_depth", f"{dst}/conv_out/conv_depth")
    rules += _conv(f"{src}.conv_out.conv_point", f"{dst}/conv_out/conv_point", bias=False)
    rules += _norm(f"{src}.conv_out.norm", f"{dst}/conv_out/norm")
    return rules


def dcae_rules(cfg: DCAEConfig) -> list[Rule]:
    """Every parameter of :class:`DCAE` with the ``AutoencoderDC`` key it comes from."""
    rules = _conv("encoder.conv_in", "encoder/conv_in")
    chans = cfg.encoder_block_out_channels
    for i, n in enumerate(cfg.encoder_layers_per_block):
        for j in range(n):
            rules += _block(
                cfg.encoder_block_types[i],
                f"encoder.down_blocks.{i}.{j}",
                f"encoder/down_blocks/{i}/{j}",
                cfg.encoder_qkv_multiscales[i],
            )
        if i < len(chans) - 1 and n > 0:
            rules += _conv(f"encoder.down_blocks.{i}.{n}.conv", f"encoder/down_blocks/{i}/{n}/conv")
    rules += _conv("encoder.conv_out", "encoder/conv_out")
    rules += _conv("decoder.conv_in", "decoder/conv_in")
    chans = cfg.decoder_block_out_channels
    for i, n in enumerate(cfg.decoder_layers_per_block):
        first = 0
        if i < len(chans) - 1 and n > 0:
            rules += _conv(f"decoder.up_blocks.{i}.0.conv", f"decoder/up_blocks/{i}/0/conv")
            first = 1
        for j in range(first, first + n):
            rules += _block(
                cfg.decoder_block_types[i],
                f"decoder.up_blocks.{i}.{j}",
                f"decoder/up_blocks/{i}/{j}",
                cfg.decoder_qkv_multiscales[i],
            )
    rules += _norm("decoder.norm_out", "decoder/norm_out")
    rules += _conv("decoder.conv_out", "decoder/conv_out")
    return rules


def load_dcae(
    path: str | os.PathLike | TensorSource, cfg: DCAEConfig, *, progress: bool = False
) -> DCAEModel:
    """A :class:`~acestep_jax.codec.dcae.DCAE` with the weights of a reference ``AutoencoderDC``
    safetensors file or folder."""
    abstract = abstract_model(lambda r: DCAEModel(cfg, rngs=r))
    return convert_into(
        abstract, dcae_rules(cfg), open_source(path), what="DC-AE checkpoint", progress=progress
    )


def load_music_codec(checkpoint_dir: str | os.PathLike, *, progress: bool = False):
    """A :class:`~acestep_jax.codec.MusicCodec` from a reference checkpoint folder
    (``music_dcae_f8c8/`` and ``music_vocoder/``, each with ``config.json`` and safetensors)."""
    from acestep_jax.codec.codec import MusicCodec
    from acestep_jax.codec.config import VocoderConfig
    from acestep_jax.convert.vocoder import load_vocoder

    parts = {}
    for name in ("music_dcae_f8c8", "music_vocoder"):
        config = os.path.join(checkpoint_dir, name, "config.json")
        if not os.path.isfile(config):
            raise FileNotFoundError(f"codec config not found: {config}")
        parts[name] = read_json(config)
    dcae = load_dcae(
        os.path.join(checkpoint_dir, "music_dcae_f8c8"),
        DCAEConfig.from_dict(parts["music_dcae_f8c8"]),
        progress=progress,
    )
    vocoder = load_vocoder(
        os.path.join(checkpoint_dir, "music_vocoder"),
        VocoderConfig.from_dict(parts["music_vocoder"]),
        progress=progress,
    )
    return MusicCodec.from_parts(dcae, vocoder)


DCAE = Component(
    name="dcae",
    hf_folder="music_dcae_f8c8",
    config_from_dict=DCAEConfig.from_dict,
    build=DCAEModel,
    rules=dcae_rules,
)
"""The DC-AE component of an ACE-Step checkpoint."""
