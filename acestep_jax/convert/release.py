"""The released checkpoint (Hugging Face layout) ↔ a converted acestep-jax checkpoint folder.

The reference release ``ACE-Step/ACE-Step-v1-3.5B`` holds one folder per model
(``ace_step_transformer/``, ``music_dcae_f8c8/``, ``music_vocoder/``, ``umt5-base/``),
each with ``config.json`` and safetensors. A converted checkpoint holds::

    acestep_jax.json        what is inside (format, version, source, dtype, parameter counts)
    transformer/  dcae/  vocoder/  text_encoder/     one orbax component each (see checkpoint.py)
    tokenizer/              the prompt tokenizer files copied from umt5-base/
    lyrics_vocab.json       the lyric BPE vocabulary

so ``sample.py --checkpoint DST`` needs nothing else. Conversion streams tensors
shard by shard (bounded host memory) into a temporary folder beside ``DST`` that is
renamed only when everything succeeded. A temporary folder left by a killed conversion
is removed by the next conversion to the same destination.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from acestep_jax.convert.checkpoint import Component, read_config, write_component
from acestep_jax.convert.core import CheckpointError, open_source, read_json
from acestep_jax.convert.hub import (
    HUB_REPO,
    DownloadError,
    cached_conversion,
    files_stamp,
    local_folder,
    looks_like_repo_id,
    reason,
    snapshot,
)
from acestep_jax.files import check_free_space, make_folder_beside

log = logging.getLogger(__name__)

MANIFEST = "acestep_jax.json"
FORMAT = "acestep-jax-checkpoint"
VERSION = 1
TOKENIZER_DIR = "tokenizer"
LYRICS_VOCAB = "lyrics_vocab.json"
OWNER_FILE = ".owner.json"  # inside a temporary folder: the host and process writing it
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "added_tokens.json",
)


def components() -> dict[str, Component]:
    from acestep_jax.convert.components import COMPONENTS

    return COMPONENTS


# ----------------------------------------------------------------------------- inspection
def is_converted(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def is_reference_layout(path: str | os.PathLike) -> bool:
    return any((Path(path) / c.hf_folder).is_dir() for c in components().values())


def read_manifest(path: str | os.PathLike) -> dict:
    """The ``acestep_jax.json`` of a converted checkpoint (clear error if absent or foreign)."""
    p = Path(path) / MANIFEST
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a converted acestep-jax checkpoint: cannot read {p} ({e})") from None
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{p}: format {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("version", 0) > VERSION:
        raise CheckpointError(f"{p}: version {data['version']} is newer than this acestep-jax ({VERSION})")
    return data


def _check_reference_folder(src: Path, names: Iterable[str]) -> None:
    problems = []
    for name in names:
        folder = src / components()[name].hf_folder
        if not folder.is_dir():
            problems.append(f"  - {folder}/ is missing")
            continue
        if not (folder / "config.json").is_file():
            problems.append(f"  - {folder}/config.json is missing")
        if not any(f.suffix == ".safetensors" for f in folder.iterdir()):
            problems.append(f"  - {folder}/ holds no .safetensors file")
    if problems:
        raise CheckpointError(f"{src} is not a complete ACE-Step checkpoint folder:\n" + "\n".join(problems))


def download(repo_id: str = HUB_REPO, *, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Download (or reuse from the Hugging Face cache) the reference checkpoint's folders."""
    patterns = [f"{c.hf_folder}/*" for c in components().values()]
    return snapshot(repo_id, patterns, "checkpoint", revision=revision, cache_dir=cache_dir)


# ----------------------------------------------------------------------------- conversion
def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    param_dtype: str = "float32",
    names: Iterable[str] | None = None,
    lyrics_vocab: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Convert the reference checkpoint ``src`` (a local folder or a Hub repo id) into ``dst``.

    ``names`` selects components (default: all). Everything is validated before the
    first tensor is converted; ``dst`` appears only once complete. Returns the manifest.
    """
    dst = Path(dst)
    _check_destination(dst, overwrite)
    if param_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"param_dtype must be 'float32' or 'bfloat16', got {param_dtype!r}")
    names = list(components()) if names is None else list(names)
    unknown = sorted(set(names) - set(components()))
    if unknown:
        raise ValueError(f"unknown components {unknown}; choose from {sorted(components())}")
    if lyrics_vocab is not None and not Path(lyrics_vocab).is_file():
        raise FileNotFoundError(f"lyrics vocabulary {lyrics_vocab} does not exist")
    src_path = local_folder(src, "checkpoint folder", download)
    _check_reference_folder(src_path, names)

    # validate every component before converting any (cheap: shapes only)
    from acestep_jax.convert.core import check_rules, param_shapes

    plans = {}
    for name in names:
        comp = components()[name]
        folder = src_path / comp.hf_folder
        cfg = comp.config_from_dict(read_json(folder / "config.json", "download the reference checkpoint again"),
                                    param_dtype=param_dtype)
        source = open_source(folder)
        check_rules(comp.rules(cfg), source, param_shapes(comp.abstract(cfg)), ignore=comp.ignore,
                    what=str(folder))
        plans[name] = (cfg, source)
    vocab = _find_vocab(lyrics_vocab, src_path)
    itemsize = 4 if param_dtype == "float32" else 2
    needed = sum(math.prod(shape) * itemsize for name, (cfg, _) in plans.items()
                 for shape in param_shapes(components()[name].abstract(cfg)).values())
    check_free_space(dst, needed + (1 << 20), "the converted checkpoint")

    tmp = _temporary_folder(dst)
    try:
        counts = {}
        for name, (cfg, source) in plans.items():
            counts[name] = write_component(tmp / name, components()[name], cfg, source, progress=progress)
            log.info("%s: %s parameters", name, f"{counts[name]:,}")
        _copy_tokenizer(src_path, tmp)
        if vocab is not None:
            shutil.copyfile(vocab, tmp / LYRICS_VOCAB)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "source": str(src),
            "param_dtype": param_dtype,
            "components": {n: {"hf_folder": components()[n].hf_folder, "num_params": counts[n]} for n in counts},
            "num_params": sum(counts.values()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _put_in_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_destination(dst: Path, overwrite: bool) -> None:
    """Refuse an existing ``dst`` unless ``overwrite`` and it is a converted checkpoint."""
    if not dst.exists():
        return
    if not overwrite:
        raise FileExistsError(f"output {dst} already exists (pass overwrite=True / --overwrite to replace it)")
    try:
        read_manifest(dst)
    except CheckpointError:
        raise FileExistsError(
            f"output {dst} exists and is not an acestep-jax checkpoint (no readable {MANIFEST}); "
            "--overwrite replaces only converted checkpoints: remove it yourself or choose another output"
        ) from None


# ----------------------------------------------------------------------------- temporary folders
def _temporary_folder(dst: Path) -> Path:
    """A fresh hidden folder beside ``dst`` that records who writes it; stale ones are cleared first."""
    clear_stale_temporaries(dst)
    tmp = make_folder_beside(dst, f".{dst.name}.tmp-")
    (tmp / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return tmp


def _put_in_place(tmp: Path, dst: Path) -> None:
    """Rename the finished ``tmp`` to ``dst`` (an existing ``dst`` is moved aside, then deleted)."""
    (tmp / OWNER_FILE).unlink(missing_ok=True)
    old = None
    if dst.exists():
        old = make_folder_beside(dst, f".{dst.name}.old-")
        os.replace(dst, old / dst.name)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clear_stale_temporaries(dst: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders an interrupted (killed) conversion to ``dst`` left behind.

    A folder whose writer runs on this host is kept while that process lives; one written
    from another host (shared storage) is only reported. Returns the folders removed.
    """
    dst = Path(dst)
    removed = []
    found = []
    for kind in ("tmp", "old"):  # folders being written / a replaced destination being deleted
        found += glob.glob(os.path.join(glob.escape(os.fspath(dst.parent)), glob.escape(f".{dst.name}.{kind}-") + "*"))
    for path in map(Path, sorted(found)):
        if not path.is_dir():
            continue
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = {}
        host, pid = owner.get("host"), owner.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and _process_alive(pid):
            log.warning("%s is being written by another conversion (process %d); leaving it", path, pid)
            continue
        if host not in (None, socket.gethostname()):
            log.warning("%s was left by a conversion on host %s; remove it once that conversion is over",
                        path, host)
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed %s, left by an interrupted conversion", path)
        removed.append(path)
    return removed


def _copy_tokenizer(src: Path, out: Path) -> None:
    from acestep_jax.convert.components import TEXT_ENCODER_HF_FOLDER

    folder = src / TEXT_ENCODER_HF_FOLDER
    found = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not found:
        log.warning("no tokenizer files in %s; the converted checkpoint cannot tokenize prompts", folder)
        return
    (out / TOKENIZER_DIR).mkdir()
    for f in found:
        shutil.copyfile(folder / f, out / TOKENIZER_DIR / f)
    if "tokenizer.json" not in found:  # only the sentencepiece model: build the fast tokenizer once, here
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(out / TOKENIZER_DIR))
        except Exception as e:  # noqa: BLE001 - the checkpoint stays usable for everything but prompts
            log.warning("could not build tokenizer.json from %s (%s); install sentencepiece and reconvert", folder, e)


def _find_vocab(explicit, src: Path):
    """The lyric vocabulary to bundle: explicit path, one beside the source, or the pinned download."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"lyrics vocabulary {explicit} does not exist")
        return Path(explicit)
    if (src / LYRICS_VOCAB).is_file():
        return src / LYRICS_VOCAB
    try:
        from acestep_jax.text.lyrics import find_lyrics_vocab
        from acestep_jax.text.lyrics.vocab import VOCAB_URL
    except ImportError:  # the lyric tokenizer needs the `lyrics` extra; the vocabulary itself does not
        log.warning("lyric vocabulary not bundled (acestep_jax.text.lyrics unavailable)")
        return None
    try:
        return find_lyrics_vocab()
    except OSError as e:  # offline, DNS, TLS, HTTP errors
        raise DownloadError(f"could not download the lyric vocabulary from {VOCAB_URL} ({reason(e)}); "
                            "pass a copy with --lyrics-vocab PATH (lyrics_vocab=) to convert offline") from None


# ----------------------------------------------------------------------------- resolution for sampling
def resolve_checkpoint(spec: str | os.PathLike, *, param_dtype: str = "float32", progress: bool = True) -> Path:
    """A converted checkpoint folder for ``spec``: a converted folder, a reference-layout folder
    (converted once and cached) or a Hub repo id (downloaded, converted and cached)."""
    path = Path(spec)
    if path.is_dir() and is_converted(path):
        read_manifest(path)
        return path
    if path.is_dir() and not is_reference_layout(path):
        raise CheckpointError(
            f"{path} is neither a converted acestep-jax checkpoint (no {MANIFEST}) nor a reference "
            f"checkpoint folder (no {', '.join(c.hf_folder for c in components().values())})"
        )
    if path.is_dir():
        folders = [path / c.hf_folder for c in components().values() if (path / c.hf_folder).is_dir()]
        stamp = files_stamp((f for folder in folders for f in folder.iterdir()), path)
    elif path.exists() or not looks_like_repo_id(str(spec)):
        raise FileNotFoundError(f"checkpoint {spec} is not a folder (nor a Hub repo id such as {HUB_REPO})")
    else:
        path = download(str(spec))
        stamp = str(spec)
    return cached_conversion(
        f"{path.name}-{param_dtype}", path, f"{stamp}|{param_dtype}", is_converted,
        lambda out: convert_checkpoint(path, out, param_dtype=param_dtype, progress=progress, overwrite=True))


def component_folder(ckpt: str | os.PathLike, name: str) -> Path:
    folder = Path(ckpt) / name
    if not folder.is_dir():
        raise CheckpointError(f"converted checkpoint {ckpt} has no {name}/ component")
    return folder


def component_config(ckpt: str | os.PathLike, name: str, **overrides):
    return read_config(component_folder(ckpt, name), components()[name], **overrides)


def counts_summary(manifest: Mapping) -> str:
    """A short table of parameter counts per component."""
    rows = [f"  {n:<14}{c['num_params']:>16,}" for n, c in manifest["components"].items()]
    return "\n".join([*rows, f"  {'total':<14}{manifest['num_params']:>16,}"])


# ----------------------------------------------------------------------------- export to the reference
JAX_ONLY_KEYS = ("dtype", "param_dtype", "remat", "context_positions", "inner_dim")
EXPORT_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def export_transformer_folder(model, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` (an :class:`ACEStepTransformer`, e.g. fine-tuned) as the reference's
    ``ace_step_transformer/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
    under ``out``, so PyTorch tools load it with ``from_pretrained``."""
    from safetensors.numpy import save_file

    from acestep_jax.convert.transformer import export_transformer
    from acestep_jax.models.transformer.config import LyricEncoderConfig

    out = Path(out)
    final = out / components()["transformer"].hf_folder
    check_export_destination(final, overwrite)
    tensors = export_transformer(model)
    cfg = model.cfg.to_dict()
    for k in JAX_ONLY_KEYS:
        cfg.pop(k, None)
    if model.cfg.lyric_encoder == LyricEncoderConfig():
        cfg.pop("lyric_encoder")  # the reference hard-codes the released sizes
    cfg = {"_class_name": "ACEStepTransformer2DModel", **cfg}
    tmp = _temporary_folder(final)
    try:
        save_file(tensors, str(tmp / EXPORT_FILES[1]), metadata={"format": "pt"})
        (tmp / EXPORT_FILES[0]).write_text(json.dumps(cfg, indent=2))
        _put_in_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def check_export_destination(final: Path, overwrite: bool) -> None:
    """Refuse an existing export folder unless ``overwrite`` and it holds only an export's files."""
    if not final.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True / --overwrite to replace it)")
    if not final.is_dir() or set(os.listdir(final)) - set(EXPORT_FILES):
        raise FileExistsError(f"{final} holds files other than an export's {list(EXPORT_FILES)}; "
                              "--overwrite will not delete them: remove it yourself or choose another output")
