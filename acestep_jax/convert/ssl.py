"""The REPA feature extractors (MERT-v1-330M, mHuBERT-147) → converted component folders.

A source is a Hugging Face model folder or Hub id holding ``config.json`` and the
weights as safetensors or PyTorch ``pytorch_model.bin`` (read with a tensor-only
unpickler, see :mod:`acestep_jax.convert.torch_pickle`). Key names are those of
transformers' ``HubertModel`` (MERT's remote ``MERTModel`` uses the same), optionally
under the ``hubert.`` / ``mert_model.`` prefix of a model saved with a head. The
positional convolution's weight norm (``dim=2``) is stored as ``weight_g``/``weight_v``
or, by newer transformers, ``parametrizations.weight.original0/1``; conversion folds it
into one kernel ``g * v / ||v||`` (norm over the output and input channels of each
kernel tap). The converted folder is a component folder (``config.json`` +
``params/``, see :mod:`acestep_jax.convert.checkpoint`).

    convert_weights.py --ssl mert m-a-p/MERT-v1-330M checkpoints/mert --dtype bfloat16
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from acestep_jax.convert.checkpoint import (
    CONFIG_FILE,
    INDEX_FILE,
    PARAMS_DIR,
    Component,
    load_component,
    write_component,
)
from acestep_jax.convert.core import (
    CheckpointError,
    Rule,
    SafetensorsSource,
    TensorSource,
    check_rules,
    conv_t,
    fold_weight_norm,
    linear_t,
    param_shapes,
    rule,
    stack_of,
    stacked_rule,
)
from acestep_jax.convert.hub import (
    cached_conversion,
    files_stamp,
    local_folder,
    looks_like_repo_id,
    snapshot,
)
from acestep_jax.convert.torch_pickle import TorchBinSource
from acestep_jax.models.ssl import HubertConfig, HubertModel

log = logging.getLogger(__name__)

MERT_REPO = "m-a-p/MERT-v1-330M"
MHUBERT_REPO = "utter-project/mHuBERT-147"
BASE_PREFIXES = ("hubert.", "mert_model.")
IGNORED = ("masked_spec_embed", "encoder.pos_conv_embed.batch_norm.num_batches_tracked")
"""Reference tensors not used at inference: the training-time mask embedding and a batch-norm counter."""

_POS_CONV = "encoder.pos_conv_embed.conv"


def _folded_conv(g, v):
    return conv_t(fold_weight_norm(g, v, axis=2))


def _norm(src: str, dst: str) -> list[Rule]:
    return [rule(f"{dst}/scale", f"{src}.weight"), rule(f"{dst}/bias", f"{src}.bias")]


def hubert_rules(cfg: HubertConfig) -> list[Rule]:
    """Every parameter of :class:`HubertModel` with the reference key(s) it comes from."""
    rules = []
    for i in range(len(cfg.conv_dim)):
        src, dst = f"feature_extractor.conv_layers.{i}", f"feature_extractor/conv_layers/{i}"
        rules.append(rule(f"{dst}/conv/kernel", f"{src}.conv.weight", conv_t))
        if cfg.conv_bias:
            rules.append(rule(f"{dst}/conv/bias", f"{src}.conv.bias"))
        if cfg.feat_extract_norm == "layer" or i == 0:
            rules += _norm(f"{src}.layer_norm", f"{dst}/norm")
    if cfg.feat_proj_layer_norm:
        rules += _norm("feature_projection.layer_norm", "feature_projection/layer_norm")
    rules += [rule("feature_projection/projection/kernel", "feature_projection.projection.weight", linear_t),
              rule("feature_projection/projection/bias", "feature_projection.projection.bias")]

    if cfg.conv_pos_batch_norm:
        bn, dst = "encoder.pos_conv_embed.batch_norm", "encoder/pos_conv_embed/batch_norm"
        rules += _norm(bn, dst)
        rules += [rule(f"{dst}/mean", f"{bn}.running_mean"), rule(f"{dst}/var", f"{bn}.running_var"),
                  rule("encoder/pos_conv_embed/conv/kernel", f"{_POS_CONV}.weight", conv_t)]
    else:
        g = (f"{_POS_CONV}.weight_g", f"{_POS_CONV}.parametrizations.weight.original0", f"{_POS_CONV}.weight")
        v = (f"{_POS_CONV}.weight_v", f"{_POS_CONV}.parametrizations.weight.original1", f"{_POS_CONV}.weight")
        rules.append(Rule("encoder/pos_conv_embed/conv/kernel", (g, v), _folded_conv))
    rules.append(rule("encoder/pos_conv_embed/conv/bias", f"{_POS_CONV}.bias"))
    rules += _norm("encoder.layer_norm", "encoder/layer_norm")

    layers = [f"encoder.layers.{i}" for i in range(cfg.num_hidden_layers)]
    linears = [f"attention.{n}" for n in ("q_proj", "k_proj", "v_proj", "out_proj")]
    linears += ["feed_forward.intermediate_dense", "feed_forward.output_dense"]
    for name in linears:
        dst = "encoder/layers/" + name.replace(".", "/")
        rules.append(Rule(f"{dst}/kernel", tuple(f"{l}.{name}.weight" for l in layers), stack_of(linear_t)))
        rules.append(stacked_rule(f"{dst}/bias", [f"{l}.{name}.bias" for l in layers]))
    for name in ("layer_norm", "final_layer_norm"):
        rules.append(stacked_rule(f"encoder/layers/{name}/scale", [f"{l}.{name}.weight" for l in layers]))
        rules.append(stacked_rule(f"encoder/layers/{name}/bias", [f"{l}.{name}.bias" for l in layers]))
    return rules


def _component(name: str, repo: str) -> Component:
    return Component(name=name, hf_folder=repo, config_from_dict=HubertConfig.from_dict, build=HubertModel,
                     rules=hubert_rules, ignore=IGNORED)


MERT = _component("mert", MERT_REPO)
MHUBERT = _component("m-hubert", MHUBERT_REPO)
SSL_COMPONENTS = {c.name: c for c in (MERT, MHUBERT)}
"""The REPA targets, named as the transformer's ``ssl_names``."""


# ----------------------------------------------------------------------------- sources
class _Unprefixed(TensorSource):
    """A source whose keys lose a leading ``prefix`` (keys without it keep their name)."""

    def __init__(self, source: TensorSource, prefix: str):
        self._source = source
        names = list(source.keys())
        self._names = {k.removeprefix(prefix): k for k in names}

    def keys(self):
        return self._names.keys()

    def __contains__(self, key):
        return key in self._names

    def shape(self, key):
        return self._source.shape(self._names[key])

    def dtype(self, key):
        return self._source.dtype(self._names[key])

    def get(self, key):
        return self._source.get(self._names[key])


def open_weights(folder: str | os.PathLike) -> TensorSource:
    """The weights of a model folder: its ``*.safetensors`` files, else its ``pytorch_model*.bin`` files."""
    folder = Path(folder)
    safetensors = sorted(folder.glob("*.safetensors"))
    bins = sorted(p for p in folder.glob("pytorch_model*.bin"))
    if safetensors:
        source = SafetensorsSource(safetensors)
    elif bins:
        source = TorchBinSource(bins)
    else:
        raise CheckpointError(f"{folder} holds no weights (*.safetensors or pytorch_model.bin)")
    marker = "feature_projection.projection.weight"
    for prefix in BASE_PREFIXES:
        if marker not in source and prefix + marker in source:
            return _Unprefixed(source, prefix)
    return source


def read_source_config(folder: str | os.PathLike, **overrides) -> HubertConfig:
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e})") from None
    try:
        return HubertConfig.from_dict(data, **overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------- conversion
def is_converted(path: str | os.PathLike) -> bool:
    return (Path(path) / PARAMS_DIR / INDEX_FILE).is_file()


def download(repo_id: str) -> Path:
    """``config.json`` and the weights of a Hub model (safetensors when it has them, else ``.bin``)."""
    path = snapshot(repo_id, [CONFIG_FILE, "*.safetensors"], "model")
    if not list(path.glob("*.safetensors")):
        path = snapshot(repo_id, [CONFIG_FILE, "pytorch_model*.bin"], "model")
    return path


def convert_ssl(src: str | os.PathLike, dst: str | os.PathLike, component: Component, *,
                param_dtype: str = "float32", progress: bool = True, overwrite: bool = False) -> int:
    """Convert the model folder (or Hub id) ``src`` into the component folder ``dst``; returns the
    parameter count. Everything is validated before the first tensor is converted, and ``dst``
    appears only once complete."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"output {dst} already exists (pass overwrite=True / --overwrite to replace it)")
    if param_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"param_dtype must be 'float32' or 'bfloat16', got {param_dtype!r}")
    src_path = local_folder(src, "model folder", download)
    cfg = read_source_config(src_path, param_dtype=param_dtype)
    source = open_weights(src_path)
    check_rules(hubert_rules(cfg), source, param_shapes(component.abstract(cfg)), ignore=component.ignore,
                what=str(src_path))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        count = write_component(tmp / "component", component, cfg, source, progress=progress)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp / "component", dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: %s parameters", component.name, f"{count:,}")
    return count


def resolve_ssl(spec: str | os.PathLike, component: Component, *, progress: bool = True) -> Path:
    """A converted folder for ``spec``: a converted folder as is; a model folder or Hub id converted
    once (float32) into the cache (``$ACESTEP_JAX_CACHE/converted``) and reused."""
    path = Path(spec)
    if path.is_dir() and is_converted(path):
        return path
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path} is neither a converted SSL model (no {PARAMS_DIR}/{INDEX_FILE}) "
                                  f"nor a model folder (no {CONFIG_FILE})")
        stamp = files_stamp((f for f in path.iterdir() if f.is_file()), path)
    elif path.exists() or not looks_like_repo_id(str(spec)):
        raise FileNotFoundError(f"{component.name} model {spec} is not a folder (nor a Hub repo id such as "
                                f"{component.hf_folder})")
    else:
        path = download(str(spec))
        stamp = str(spec)
    return cached_conversion(component.name, path, stamp, is_converted,
                             lambda out: convert_ssl(path, out, component, progress=progress, overwrite=True))


def load_ssl(spec: str | os.PathLike, component: Component, *, dtype: str = "float32",
             param_dtype: str = "float32", mesh=None, progress: bool = True) -> HubertModel:
    """The encoder of ``spec`` (converted folder, model folder or Hub id) with ``dtype`` compute and
    ``param_dtype`` storage (cast on restore)."""
    folder = resolve_ssl(spec, component, progress=progress)
    return load_component(folder, component, mesh=mesh, dtype=dtype, param_dtype=param_dtype)
