"""Model presets and training configs shipped with the package, and random models built from them.

The JSON files live in the package (``acestep_jax/configs``, read with
:mod:`importlib.resources`, so an installed wheel has them; a source checkout's
top-level ``configs/`` is a link to the same folder). ``tiny`` runs the whole stack
anywhere in seconds (``sample.py --tiny-random``, ``train.py --tiny-random``, tests,
CPU benchmarks); ``full`` holds the released checkpoint's sizes (benchmarks with random
weights). The tiny prompt tokenizer is byte-level and built in memory, so nothing is
downloaded. The REPA feature extractors have their released configs here too
(``configs/ssl/``): ``mert`` is MERT-v1-330M (24 kHz, 1024 wide, 24 pre-LN layers),
``m-hubert`` is mHuBERT-147 (16 kHz, 768 wide, 12 post-LN layers).
"""

from __future__ import annotations

import json
import math
from importlib import resources

import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.nn import abstract_model

PRESETS = ("tiny", "full")
BYTE_VOCAB_SPECIALS = ("<pad>", "</s>", "<unk>")
SSL_CONFIGS = {"mert": "mert-v1-330m.json", "m-hubert": "mhubert-147.json"}  # the encoders' Hub config.json


def packaged_config(name: str):
    """A file under the package's ``configs/`` (a :class:`importlib.resources` traversable)."""
    return resources.files("acestep_jax").joinpath("configs", *name.split("/"))


def training_configs() -> list[str]:
    """Names of the packaged training configs (``train.py --config NAME``)."""
    return sorted(p.name[: -len(".json")] for p in packaged_config("").iterdir() if p.name.endswith(".json"))


def preset_dict(preset: str, name: str) -> dict:
    """The raw config dict of component ``name`` (transformer, dcae, vocoder, umt5) in ``preset``."""
    if preset not in PRESETS or name not in ("transformer", "dcae", "vocoder", "umt5"):
        raise ValueError(f"unknown preset {preset!r}/{name!r}; presets {PRESETS}, "
                         "components ['dcae', 'transformer', 'umt5', 'vocoder']")
    return json.loads(packaged_config(f"{preset}/{name}.json").read_text())


def preset_config(preset: str, name: str, **overrides):
    """The config of component ``name`` (transformer, dcae, vocoder, umt5) in ``preset``."""
    from acestep_jax.codec import DCAEConfig, VocoderConfig
    from acestep_jax.models.transformer import TransformerConfig
    from acestep_jax.text import UMT5Config

    classes = {"transformer": TransformerConfig, "dcae": DCAEConfig, "vocoder": VocoderConfig, "umt5": UMT5Config}
    return classes[name].from_dict(preset_dict(preset, name), **overrides)


def released_ssl_config(name: str, **overrides):
    """The released config of SSL encoder ``name`` (``mert`` or ``m-hubert``) with ``overrides`` (e.g. dtypes)."""
    from acestep_jax.models.ssl import HubertConfig

    if name not in SSL_CONFIGS:
        raise ValueError(f"unknown SSL model {name!r}; choose from {sorted(SSL_CONFIGS)}")
    return HubertConfig.from_dict(json.loads(packaged_config(f"ssl/{SSL_CONFIGS[name]}").read_text()), **overrides)


def random_ssl_model(cfg, seed: int = 0):
    """A :class:`~acestep_jax.models.ssl.HubertModel` of ``cfg`` with host-generated random weights."""
    from acestep_jax.models.ssl import HubertModel

    return random_weights(abstract_model(lambda r: HubertModel(cfg, rngs=r)), seed)


def byte_tokenizer(max_length: int = 256):
    """A byte-level prompt tokenizer (ids 3..258 are bytes, ``</s>`` appended) for tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    from acestep_jax.text import PromptTokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(BYTE_VOCAB_SPECIALS)}
    vocab.update({ch: len(BYTE_VOCAB_SPECIALS) + i for i, ch in enumerate(sorted(alphabet))})
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PromptTokenizer(tok, pad_id=0, max_length=max_length)


def _conv_fan_ins(abstract: nnx.Module) -> dict[str, int]:
    """Inputs each output of a convolution sums: ``taps x channels`` (transposed: ``taps / stride x channels``),
    by kernel path."""
    from acestep_jax.codec.vocoder import ConvTranspose1d
    from acestep_jax.nn.layers import Conv

    fans = {}
    for path, module in nnx.iter_graph(abstract):
        if isinstance(module, (Conv, ConvTranspose1d)):
            shape = module.kernel.shape
            fan = math.prod(shape[:-1])
            if isinstance(module, ConvTranspose1d):
                fan = max(shape[0] // module.stride, 1) * shape[1]
            fans["/".join(map(str, (*path, "kernel")))] = fan
    return fans


def random_weights(abstract: nnx.Module, seed: int, *, conv_fan_in: bool = False) -> nnx.Module:
    """Fill an abstract model (``nnx.eval_shape``) with host-generated random weights.

    Much faster than running each layer's initialiser eagerly on CPU: matrices get
    ``N(0, 1/fan_in)``, vectors named like norm scales get ones, other vectors zeros.
    ``fan_in`` is the next-to-last dimension (input channels), or with ``conv_fan_in``
    a convolution's whole receptive field (:func:`_conv_fan_ins`). The codec needs the
    latter: with channels only, each of the vocoder's convolutions gains about
    ``sqrt(taps)``, its output reaches ~1e12 before the final tanh, and the audio is a
    +-1 square wave whose zero crossings flip sign under float rounding.
    """
    from acestep_jax.convert.core import load_flat

    rng = np.random.default_rng(seed)
    fans = _conv_fan_ins(abstract) if conv_fan_in else {}
    arrays = {}
    for path, var in nnx.to_flat_state(nnx.state(abstract)):
        key, shape = "/".join(map(str, path)), tuple(var.shape)
        if len(shape) >= 2:
            fan = fans.get(key, math.prod(shape[-2:-1]))
            value = rng.standard_normal(shape, np.float32) / np.sqrt(max(fan, 1))
        elif str(path[-1]) in ("scale", "weight", "gamma"):
            value = np.ones(shape, np.float32)
        else:
            value = np.zeros(shape, np.float32)
        arrays[key] = jnp.asarray(value, var.dtype)
    return load_flat(abstract, arrays)


def _build(factory, seed: int, on_device: bool, conv_fan_in: bool = False):
    if on_device:  # large models: run the initialisers as one compiled program on the accelerator
        return nnx.jit(lambda: factory(nnx.Rngs(seed)))()
    return random_weights(abstract_model(factory), seed, conv_fan_in=conv_fan_in)


def random_models(preset: str = "tiny", seed: int = 0, *, dtype: str = "float32", param_dtype: str = "float32",
                  transformer_overrides: dict | None = None, codec_dtype: str = "float32"):
    """``(transformer, codec, text_encoder, prompt_tokenizer)`` with random weights from ``seed``.

    ``dtype``/``param_dtype`` apply to the transformer; ``codec_dtype`` is the codec's
    compute and storage dtype. The prompt tokenizer is the
    byte-level one (its ids fit the tiny and full UMT5 vocabularies).
    """
    from acestep_jax.codec import MusicCodec
    from acestep_jax.models.transformer import ACEStepTransformer
    from acestep_jax.text import UMT5Encoder

    t_cfg = preset_config(preset, "transformer", dtype=dtype, param_dtype=param_dtype,
                          **(transformer_overrides or {}))
    codec_dt = {"dtype": codec_dtype, "param_dtype": codec_dtype}
    d_cfg, v_cfg = preset_config(preset, "dcae", **codec_dt), preset_config(preset, "vocoder", **codec_dt)
    u_cfg = preset_config(preset, "umt5")
    big = preset != "tiny"
    transformer = _build(lambda r: ACEStepTransformer(t_cfg, rngs=r), seed, big)
    codec = _build(lambda r: MusicCodec(d_cfg, v_cfg, rngs=r), seed + 1, big, conv_fan_in=True)
    text_encoder = _build(lambda r: UMT5Encoder(u_cfg, rngs=r), seed + 2, big)
    return transformer, codec, text_encoder, byte_tokenizer()
