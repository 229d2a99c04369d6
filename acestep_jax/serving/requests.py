"""Generation requests: one format for command lines, job files, the service and output records.

A request is a JSON object. Two spellings are accepted, told apart by their keys:

- the project's own: the :data:`~acestep_jax.sampling.params.PARAM_FIELDS` names plus
  the :data:`REQUEST_FIELDS` (``prompt``, ``lyrics``, ``seeds``, ``format``, ...);
- the reference's: the ``/generate`` body of its ``infer-api.py`` and the
  ``input_params`` records its pipeline writes (``audio_duration``, ``infer_step``,
  ``actual_seeds``, ``edit_n_min``, ``src_audio_path``, ...).

:data:`FIELDS` (those two tables) says each key's types, bounds and reference name; the
command line (``sample.py``), job files and both HTTP endpoints read requests through
:func:`parse_request`. Unknown keys are an error naming the key; every bad value is a
:class:`RequestError` naming its field (in the spelling the request used). Seeds left out
and the reference's random duration (``audio_duration <= 0``) are drawn here, so a parsed
:class:`Request` is fully determined.

Every output's ``.json`` record is :meth:`Request.to_dict` of the output plus an
``output`` entry saying how it was made (ignored when read back), so any record is itself
a request that reproduces its output: through ``sample.py --params-json``, as a job line
and as an HTTP body. Requests default to ``bucket`` and ``batch_invariant`` on: an output
equals the same request run alone, whatever it is batched with. A request with
``batch_invariant: false`` and several outputs is *coupled* (the reference's omega mean
over the batch): its outputs run as one batch of their own, and each record keeps all its
seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from acestep_jax.codec.audio_io import FORMATS
from acestep_jax.codec.codec import OUTPUT_SAMPLE_RATE
from acestep_jax.convert.hub import looks_like_repo_id
from acestep_jax.lora import SCALE_MODES, LoraSpec
from acestep_jax.sampling import SamplingParams
from acestep_jax.sampling.fields import Field, FieldError, json_type
from acestep_jax.sampling.params import (
    MAX_SECONDS,
    PARAM_FIELDS,
    REPAINT_TASKS,
    SOURCE_TASKS,
    TASKS,
)

SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)  # the server's (each rate compiles its resampler)
MAX_SEED = 2**32 - 1  # seeds are uint32, as the reference's torch generators take them
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")  # the server's names for uploaded audio (POST /v1/uploads)
RECORD_KEY = "output"  # what a record adds to its request (paths, batch, timings); ignored when read back
REFERENCE_IGNORED = ("bf16", "torch_compile", "debug", "timecosts", "audio_path")
REFERENCE_REFUSED = ("checkpoint_path", "output_path", "device_id", "save_path")
REQUEST_DEFAULTS = {"bucket": True, "batch_invariant": True}  # where a request's defaults differ from SamplingParams
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

RequestError = FieldError  # a bad request value (a UsageError naming the field as the request spelled it)

REQUEST_FIELDS = (
    Field("prompt", "str", "tags / description", reference="prompt"),
    Field("lyrics", "str", "lyrics text (structure tags like [verse] allowed)", reference="lyrics"),
    Field("seeds", "ints", "one per output (default: random)", reference="actual_seeds", low=0, high=MAX_SEED,
          nullable=True),
    Field("retake_seeds", "ints", "one per output (retake noise; default: random)", reference="retake_seeds",
          low=0, high=MAX_SEED, nullable=True),
    Field("batch_size", "int", "outputs, generated in one batch", flag="--batch", reference="batch_size", low=1),
    Field("format", "str", "audio format (default: from --out's extension)", reference="format", choices=FORMATS),
    Field("sample_rate", "int", "output sample rate (Hz)", low=8000, high=192000),
    Field("src_audio", "str", "source audio (repaint/extend/edit; audio2audio reference)",
          reference="src_audio_path", nullable=True),
    Field("src_upload", "str", "the server: an uploaded source audio's id (POST /v1/uploads)", flag="",
          nullable=True),
    Field("target_prompt", "str", "edit: the target prompt", flag="--edit-target-prompt",
          reference="edit_target_prompt", nullable=True),
    Field("target_lyrics", "str", "edit: the target lyrics", flag="--edit-target-lyrics",
          reference="edit_target_lyrics", nullable=True),
    Field("lora", "str", "a LoRA path, or a list of {path, weight, scale}", flag="", reference="lora_name_or_path",
          nullable=True),
    Field("lora_weight", "float", "the weight of a LoRA given as a path", flag="", reference="lora_weight",
          low=-100, high=100),
    Field("name", "str", "job files: the outputs' file name", flag=""),
)
"""The request's fields besides the :class:`SamplingParams` ones."""
FIELDS = REQUEST_FIELDS + PARAM_FIELDS
BY_NAME = {f.name: f for f in FIELDS}
BY_REFERENCE = {f.reference: f for f in FIELDS if f.reference}
# the reference's keys with no field of their own: __call__'s other spelling of the seeds,
# and audio2audio's switch and reference audio (mapped onto task and src_audio)
REFERENCE_EXTRA = {"manual_seeds": BY_NAME["seeds"], "audio2audio_enable": Field("audio2audio_enable", "bool"),
                   "ref_audio_input": Field("ref_audio_input", "str", nullable=True)}
_PARAM_NAMES = {f.name for f in PARAM_FIELDS}
_OWN_ONLY = {f.name for f in FIELDS if f.name != f.reference} | {RECORD_KEY}
_REFERENCE_ONLY = ({f.reference for f in FIELDS if f.reference and f.reference != f.name} | set(REFERENCE_EXTRA)
                   | set(REFERENCE_IGNORED) | set(REFERENCE_REFUSED)) - {"audio_path"}


@dataclass(frozen=True)
class Limits:
    """What an operator allows. ``tasks``: the tasks taken; ``local_paths``: whether
    requests may name files on this machine (source audio, LoRAs; not the server);
    ``uploads``: whether they may name uploaded audio (the server); ``loras``: the LoRAs
    (paths or Hub ids) requests may name without ``local_paths``; ``sample_rates``: the
    output rates taken (empty: any the field allows)."""

    max_duration: float = MAX_SECONDS
    max_steps: int = 200
    max_outputs: int = 8
    max_prompt_chars: int = 4000
    max_lyrics_chars: int = 8000  # about 6,800 characters of English lyrics reach the 4096-token limit
    tasks: tuple[str, ...] = TASKS
    local_paths: bool = True
    uploads: bool = False
    loras: tuple[str, ...] = ()
    sample_rates: tuple[int, ...] = ()

    def __post_init__(self):
        if not 0 < self.max_duration <= MAX_SECONDS:
            raise ValueError(f"max_duration must be in (0, {MAX_SECONDS:g}], got {self.max_duration}")
        for name in ("max_steps", "max_outputs", "max_prompt_chars", "max_lyrics_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if bad := [t for t in self.tasks if t not in TASKS]:
            raise ValueError(f"unknown tasks {bad}; tasks are {TASKS}")


SERVER_LIMITS = Limits(local_paths=False, uploads=True, sample_rates=SAMPLE_RATES)


@dataclass(frozen=True)
class Request:
    """One request, fully resolved: ``len(seeds)`` outputs, output ``i`` from ``seeds[i]``
    and ``retake_seeds[i]``."""

    prompt: str
    params: SamplingParams
    seeds: tuple[int, ...]
    retake_seeds: tuple[int, ...]
    lyrics: str = ""
    format: str = "wav"
    sample_rate: int = OUTPUT_SAMPLE_RATE
    src_audio: str | None = None
    src_upload: str | None = None
    target_prompt: str | None = None
    target_lyrics: str | None = None
    lora: tuple[LoraSpec, ...] = ()
    name: str | None = None
    reference: bool = field(default=False, compare=False)  # spelled in the reference's names
    upload_path: str | None = field(default=None, compare=False)  # where the server keeps src_upload

    @property
    def source(self) -> str | None:
        """The source audio file: ``src_audio``, or the stored upload once the server attached it."""
        return self.src_audio if self.src_audio is not None else self.upload_path

    @property
    def count(self) -> int:
        return len(self.seeds)

    @property
    def coupled(self) -> bool:
        """Whether the outputs depend on each other (the omega mean over the batch): they run as one
        batch of exactly :attr:`count` items, and each output is reproduced by the whole request."""
        return not self.params.batch_invariant and self.count > 1

    def to_dict(self, index: int | None = None) -> dict:
        """The request in the project's spelling (every value explicit); ``index``: the request
        that reproduces output ``index`` (its seed alone, unless the request is coupled)."""
        d = {"prompt": self.prompt, "lyrics": self.lyrics}
        d.update({f.name: getattr(self.params, f.name) for f in PARAM_FIELDS})
        d["oss_steps"] = list(self.params.oss_steps)
        seeds, retake = self.seeds, self.retake_seeds
        if index is not None and not self.coupled:
            seeds, retake = seeds[index : index + 1], retake[index : index + 1]
        d.update(seeds=list(seeds), retake_seeds=list(retake), format=self.format, sample_rate=self.sample_rate)
        for key in ("src_audio", "src_upload", "target_prompt", "target_lyrics", "name"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.lora:
            d["lora"] = [s.to_record() for s in self.lora]
        return d

    def spelled(self, name: str) -> str:
        """``name`` (a field here) as this request's format spells it."""
        return _spell(name, self.reference)


def _spell(name: str, reference: bool) -> str:
    f = BY_NAME.get(name)
    return f.reference if reference and f is not None and f.reference else name


def _value(key: str, f: Field, v, reference: bool):
    """``v`` checked against ``f`` (``key``: its spelling, for errors)."""
    if f.name == "lora" and v is not None:
        return _lora(key, v)
    if f.kind == "ints" and reference and isinstance(v, str):  # the reference's __call__ takes "1, 2, 3"
        try:
            v = [int(s) for s in v.split(",") if s.strip()]
        except ValueError:
            raise RequestError(key, f"must be comma-separated integers, got {v[:40]!r}") from None
    return f.check(v, key)


def _lora(key: str, v) -> tuple[LoraSpec, ...] | str:
    """A path (weight from ``lora_weight``) or a record's list of ``{path, weight, scale}``."""
    if isinstance(v, str):
        return v
    if not isinstance(v, list):
        raise RequestError(key, f"must be a path or a list of {{path, weight, scale}}, got {json_type(v)}")
    specs = []
    for i, item in enumerate(v):
        k = f"{key}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise RequestError(k, "must be an object with a string 'path'")
        if extra := set(item) - {"path", "weight", "scale"}:
            raise RequestError(k, f"unknown key {min(extra)!r}")
        weight = BY_NAME["lora_weight"].check(item.get("weight", 1.0), f"{k}.weight")
        scale = item.get("scale", "reference")
        if scale not in SCALE_MODES:
            raise RequestError(f"{k}.scale", f"must be one of {', '.join(SCALE_MODES)}")
        specs.append(LoraSpec(item["path"], weight, scale))
    return tuple(specs)


# ---------------------------------------------------------------------------- parsing
def detect_reference(data: Mapping) -> bool:
    """Whether ``data`` is spelled in the reference's names (ValueError when it mixes both)."""
    own = sorted(k for k in data if k in _OWN_ONLY)
    ref = sorted(k for k in data if k in _REFERENCE_ONLY)
    if own and ref:
        raise RequestError(own[0], f"is this project's name but the request also uses the reference's "
                           f"{ref[0]!r}; spell a request in one format")
    return bool(ref)


def parse_request(
    data,
    limits: Limits = Limits(),
    *,
    reference: bool | None = None,
    rng: np.random.Generator | None = None,
) -> Request:
    """Validate ``data`` (a decoded JSON object) into a :class:`Request`.

    ``reference``: the format (``None``: told from the keys). Missing seeds are drawn
    from ``rng``. Raises :class:`RequestError` naming the first bad field.
    """
    if not isinstance(data, Mapping):
        raise RequestError("body", f"must be a JSON object, got {json_type(data)}")
    if reference is None:
        reference = detect_reference(data)
    rng = rng or np.random.default_rng()
    values: dict = {}
    extra: dict = {}
    for key, v in data.items():
        if not isinstance(key, str):
            raise RequestError(str(key), "keys must be strings")
        if reference:
            if key in REFERENCE_REFUSED:
                raise RequestError(key, "is not taken: the service owns its model, devices and output files")
            if key in REFERENCE_IGNORED:
                continue
            f = BY_REFERENCE.get(key) or REFERENCE_EXTRA.get(key)
        else:
            if key == RECORD_KEY:
                continue
            f = BY_NAME.get(key)
        if f is None:
            raise RequestError(key, "unknown key" + (" (the request is read in the reference's names)"
                                                     if reference else ""))
        target = f.name
        if target in values or target in extra:
            raise RequestError(key, f"given twice (as {f.reference!r} and 'manual_seeds')")
        (values if f.name in BY_NAME else extra)[target] = _value(key, f, v, reference)
    return _build(values, extra, limits, reference, rng)


def _build(values: dict, extra: dict, limits: Limits, reference: bool, rng) -> Request:
    def spell(name):
        return _spell(name, reference)

    def get(name, default=None):
        v = values.get(name)
        return default if v is None else v

    if "prompt" not in values:
        raise RequestError("prompt", "is required")
    prompt, lyrics = values["prompt"], get("lyrics", "")
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError("prompt", f"has {len(prompt)} characters; at most {limits.max_prompt_chars}")
    if len(lyrics) > limits.max_lyrics_chars:
        raise RequestError("lyrics", f"has {len(lyrics)} characters; at most {limits.max_lyrics_chars}")

    task, src_audio, upload = get("task", "text2music"), get("src_audio"), get("src_upload")
    if extra.get("audio2audio_enable"):  # the reference switches to audio2audio with a reference audio
        if extra.get("ref_audio_input") is None:
            raise RequestError("audio2audio_enable", "needs ref_audio_input")
        if src_audio is not None:
            raise RequestError("src_audio_path", "cannot be combined with audio2audio (ref_audio_input)")
        task, src_audio = "audio2audio", extra["ref_audio_input"]
    elif extra.get("ref_audio_input") is not None:
        raise RequestError("ref_audio_input", "is only read with audio2audio_enable: true")
    if task not in limits.tasks:
        raise RequestError(spell("task"), f"{task!r} is not served here; tasks: {', '.join(limits.tasks)}")
    if src_audio is not None and not limits.local_paths:
        raise RequestError(spell("src_audio"), "is not taken: the service reads no files named by requests; "
                           "upload the audio (POST /v1/uploads) and give its id as src_upload")
    if upload is not None and not limits.uploads:
        raise RequestError("src_upload", "is only taken by the HTTP server; give a file as src_audio")
    if upload is not None and (src_audio is not None or not UPLOAD_ID.fullmatch(upload)):
        raise RequestError("src_upload", "must be an upload's id (32 hex digits), and not given with src_audio")
    given_source = src_audio if upload is None else upload
    if task in SOURCE_TASKS and given_source is None:
        raise RequestError("src_upload" if limits.uploads else spell("src_audio"), f"is required by task {task!r}")
    if given_source is not None and task not in SOURCE_TASKS:
        raise RequestError("src_upload" if upload else spell("src_audio"), f"is not used by task {task!r}")
    if task == "edit" and (values.get("target_prompt") is None or values.get("target_lyrics") is None):
        raise RequestError(spell("target_prompt"), "and the target lyrics are required by task 'edit'")

    duration = get("duration", SamplingParams.duration)
    if reference and duration <= 0:  # the reference draws a random duration
        hi = min(240.0, limits.max_duration)
        duration = float(rng.uniform(min(30.0, hi), hi))
    if not 0 < duration <= limits.max_duration:
        raise RequestError(spell("duration"), f"must be in (0, {limits.max_duration:g}] seconds, got {duration:g}")
    steps = get("infer_steps", SamplingParams.infer_steps)
    if steps > limits.max_steps:
        raise RequestError(spell("infer_steps"), f"must be at most {limits.max_steps}, got {steps}")
    oss = get("oss_steps", ())
    if len(oss) > limits.max_steps:
        raise RequestError(spell("oss_steps"), f"has {len(oss)} steps; at most {limits.max_steps}")

    given = {k: values[k] for k in _PARAM_NAMES if values.get(k) is not None}
    params = SamplingParams(**{**REQUEST_DEFAULTS, **given, "task": task, "duration": duration, "oss_steps": oss})
    if params.zero_steps > params.infer_steps:
        raise RequestError("zero_steps", f"must be at most infer_steps ({params.infer_steps})")
    seeds, retake_seeds = _seeds(values, limits, reference, rng, spell)
    lora = _lora_specs(values, limits, reference, spell)
    request = Request(
        prompt=prompt, lyrics=lyrics, params=params, seeds=seeds, retake_seeds=retake_seeds,
        format=get("format", "wav"), sample_rate=_sample_rate(values, limits), src_audio=src_audio, src_upload=upload,
        target_prompt=values.get("target_prompt"), target_lyrics=values.get("target_lyrics"), lora=lora,
        name=_name(values.get("name")), reference=reference,
    )
    check_params(request)
    return request


def _seeds(values, limits: Limits, reference: bool, rng, spell):
    """One seed per output. The project's format: ``seeds`` gives one output each (``batch_size``
    must agree); the reference's: ``batch_size`` outputs (default 1), seed ``i`` or the last."""
    seeds, retake = values.get("seeds") or (), values.get("retake_seeds") or ()
    count = values.get("batch_size")
    if count is None:
        count = 1 if reference or not seeds else len(seeds)
    elif not reference and seeds and len(seeds) != count:
        raise RequestError("batch_size", f"is {count} but {len(seeds)} seeds are given")
    if count > limits.max_outputs:
        raise RequestError(spell("batch_size") if values.get("batch_size") else spell("seeds"),
                           f"asks for {count} outputs; at most {limits.max_outputs} per request")
    if not reference and retake and len(retake) != count:
        raise RequestError("retake_seeds", f"has {len(retake)} entries for {count} outputs")

    def fill(given):
        drawn = [int(s) for s in rng.integers(0, MAX_SEED, count, endpoint=True)]
        return tuple(given[min(i, len(given) - 1)] if given else drawn[i] for i in range(count))

    return fill(seeds), fill(retake)


def _lora_specs(values, limits: Limits, reference: bool, spell) -> tuple[LoraSpec, ...]:
    lora = values.get("lora")
    if lora is None or (reference and lora == "none"):
        if "lora_weight" in values and not reference:
            raise RequestError("lora_weight", "is given without lora")
        return ()
    if isinstance(lora, str):
        specs = (LoraSpec(lora, values.get("lora_weight", 1.0)),)
    else:
        if "lora_weight" in values:
            raise RequestError("lora_weight", "is given with a list of LoRAs (each has its weight)")
        specs = lora
    for spec in specs:  # local files are checked by with_local_checks
        if not limits.local_paths and spec.path not in limits.loras:
            raise RequestError(spell("lora"), f"{spec.path!r} is not one of this server's LoRAs: "
                               f"{', '.join(limits.loras) or 'none'} (GET /v1/loras)")
    return specs


def _sample_rate(values, limits: Limits) -> int:
    rate = values.get("sample_rate", OUTPUT_SAMPLE_RATE)
    if limits.sample_rates and rate not in limits.sample_rates:
        raise RequestError("sample_rate", f"must be one of {', '.join(map(str, limits.sample_rates))}; got {rate}")
    return rate


def _name(name: str | None) -> str | None:
    if name is not None and not _NAME_RE.fullmatch(name):
        raise RequestError("name", "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                           "or digit")
    return name


def check_params(request: Request, frames: int | None = None) -> None:
    """:meth:`SamplingParams.validate` (``frames``: the source audio's latent frames, once known)
    as a :class:`RequestError` naming the field it blames."""
    try:
        request.params.validate(frames if request.params.task in SOURCE_TASKS else None)
    except ValueError as e:
        if request.params.task in SOURCE_TASKS and frames is None and "source latents" in str(e):
            return  # checked again once the source audio's length is known
        message = str(e)
        found = [(m.start(), n) for n in _PARAM_NAMES - {"task"} if (m := re.search(rf"\b{n}\b", message))]
        name = min(found)[1] if found else "repaint_start" if request.params.task in REPAINT_TASKS else "task"
        raise RequestError(request.spelled(name), message) from None


def source_length(path: str) -> tuple[int, float]:
    """The latent frames ``path`` encodes to and its seconds, from its header (no decoding);
    FileNotFoundError if absent."""
    import soundfile as sf

    from acestep_jax.codec import latent_frames

    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    info = sf.info(path)
    return latent_frames(info.frames, info.samplerate), info.frames / info.samplerate


@functools.lru_cache(maxsize=64)
def _lora_problem(path: str, stamp: tuple[str, int, int]) -> str | None:
    """What is wrong with the LoRA at ``path`` (as of ``stamp``: its absolute path, mtime and size), or ``None``."""
    from acestep_jax.convert.core import CheckpointError
    from acestep_jax.lora import read_lora

    try:
        read_lora(path)
    except (CheckpointError, ValueError) as e:
        return str(e)
    return None


def with_local_checks(request: Request, folder: str | os.PathLike | None = None) -> Request:
    """``request`` with its files resolved and checked before any model loads: relative paths
    are taken against ``folder`` (default: the working folder); the source audio exists, is
    readable, at most :data:`MAX_SECONDS` long and fits the task's windows; each LoRA reads
    as an adapter with finite values (job files and ``sample.py``; the server takes no files)."""

    def resolve(path: str) -> str:
        return path if folder is None or os.path.isabs(path) else os.path.join(folder, path)

    def hub_id(path: str) -> bool:  # kept as it is, downloaded when the models load
        return not os.path.exists(resolve(path)) and looks_like_repo_id(path)

    lora = tuple(s if hub_id(s.path) else dataclasses.replace(s, path=resolve(s.path)) for s in request.lora)
    for spec, original in zip(lora, request.lora, strict=True):
        if hub_id(original.path):
            continue
        if not os.path.exists(spec.path):
            raise RequestError(request.spelled("lora"), f"{spec.path} does not exist")
        stat = os.stat(spec.path)
        problem = _lora_problem(spec.path, (os.path.abspath(spec.path), stat.st_mtime_ns, stat.st_size))
        if problem is not None:
            raise RequestError(request.spelled("lora"), problem)
    src = None if request.src_audio is None else resolve(request.src_audio)
    request = dataclasses.replace(request, lora=lora, src_audio=src)
    if src is None:
        return request
    name = request.spelled("src_audio")
    try:
        frames, seconds = source_length(src)
    except FileNotFoundError:
        raise RequestError(name, f"{src} does not exist") from None
    except Exception as e:  # noqa: BLE001 - an unreadable header: name the file
        raise RequestError(name, f"cannot read {src}: {e}") from None
    if seconds > MAX_SECONDS:
        raise RequestError(name, f"{src} is {seconds:.1f} s long; source audio may be at most {MAX_SECONDS:g} s: "
                           "cut it first")
    check_params(request, frames)
    return request
