"""End-to-end generation: prompts and lyrics → conditioning → sampling → audio.

:class:`ACEStepPipeline` holds the four models and two tokenizers of a checkpoint::

    pipe = ACEStepPipeline.from_checkpoint("ACE-Step/ACE-Step-v1-3.5B")   # or a folder
    out = pipe.generate(["funk, bass, 110 bpm"], ["[verse]\\nhello"],
                        SamplingParams(duration=30, infer_steps=27), seeds=[7])
    out.audio  # [B, 2, N] float32 at out.sample_rate

Prompt and lyric lengths are padded to buckets (:data:`TEXT_BUCKET`,
:data:`LYRIC_BUCKET`) so new inputs reuse compiled programs; the padding is masked and
the conditions keep the positions they have unpadded (the transformer's
``context_positions``), so it leaves the result unchanged. Durations are bucketed
with ``SamplingParams(bucket=True)``: the noise, the loop and the length-masked decode
then depend on the bucket only, so a new duration inside a warm bucket compiles nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.codec import MusicCodec, frames_to_seconds, load_audio
from acestep_jax.codec.codec import FRAME_SAMPLES, OUTPUT_SAMPLE_RATE, SAMPLE_RATE
from acestep_jax.codec.resample import resampled_length
from acestep_jax.models.transformer import ACEStepTransformer
from acestep_jax.sampling import Conditioning, Noise, SamplingParams, generate
from acestep_jax.sampling.params import SOURCE_TASKS
from acestep_jax.sampling.progress import step_bar
from acestep_jax.sampling.tasks import item_frames, item_params, random_seeds
from acestep_jax.text import PromptTokenizer, UMT5Encoder, umt5_erg_scales
from acestep_jax.text.lyrics.tokenizer import MAX_TOKENS as MAX_LYRIC_TOKENS
from acestep_jax.text.lyrics.tokenizer import check_length as check_lyric_length

if TYPE_CHECKING:
    from acestep_jax.lora import LoraMerge, LoraSpec, MergedLora

log = logging.getLogger(__name__)

TEXT_BUCKET = 32
LYRIC_BUCKET = 64
OVERLAP_DECODE_SECONDS = 48  # longer outputs are decoded in overlapping windows
DECODE_WINDOW_FRAMES = 128


def _bucket(n: int, multiple: int, cap: int | None = None) -> int:
    size = max(multiple, math.ceil(n / multiple) * multiple)
    return size if cap is None else min(size, max(cap, n))


@dataclass
class Generation:
    """One batch of results: audio ``[B, 2, N]`` at ``sample_rate``, latents, parameters per item.

    ``lengths``: each item's length in samples (items of a mixed-duration batch are zero
    past their own length); :meth:`item_audio` trims to it.
    """

    audio: np.ndarray
    sample_rate: int
    latents: np.ndarray
    params: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)

    def item_audio(self, i: int) -> np.ndarray:
        """Item ``i``'s audio ``[2, n]``, trimmed to its own length."""
        return self.audio[i][:, : self.lengths[i]] if self.lengths else self.audio[i]


@nnx.jit(static_argnames=("erg",))
def _encode_text(encoder: UMT5Encoder, ids, mask, erg: bool):
    scales = umt5_erg_scales(encoder.cfg.num_layers) if erg else None
    return encoder(ids, mask, query_scales=scales)


class ACEStepPipeline:
    """The transformer, codec, UMT5 prompt encoder and tokenizers, with a mesh to run on."""

    def __init__(
        self,
        transformer: ACEStepTransformer,
        codec: MusicCodec,
        text_encoder: UMT5Encoder,
        prompt_tokenizer: PromptTokenizer,
        lyric_tokenizer: LazyLyricTokenizer,
        *,
        mesh=None,
    ):
        self.transformer, self.codec, self.text_encoder = transformer, codec, text_encoder
        self.prompt_tokenizer, self.lyric_tokenizer = prompt_tokenizer, lyric_tokenizer
        self.mesh = mesh
        self.checkpoint: Path | None = None  # the converted checkpoint folder, when loaded from one
        self._lora: LoraMerge | None = None  # the adapters merged into the transformer

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        spec: str | os.PathLike,
        *,
        dtype: str = "bfloat16",
        param_dtype: str | None = None,
        mesh=None,
        lyrics_vocab: str | os.PathLike | None = None,
        transformer: str | os.PathLike | None = None,
        progress: bool = True,
        codec_dtype: str = "float32",
        transformer_overrides: dict | None = None,
    ) -> ACEStepPipeline:
        """Load a converted checkpoint, a reference-layout folder (converted once, cached) or a Hub id.

        ``dtype`` is the transformer's compute dtype; ``param_dtype`` (default: as
        converted) its storage dtype. The text encoder runs in float32, the codec (DC-AE and
        vocoder) in ``codec_dtype`` (weights stored in it too, as the reference's ``.to(dtype)``).
        ``transformer`` replaces the checkpoint's transformer with a component folder,
        e.g. the fine-tuned ``RUN/transformer`` that ``train.py`` writes. ``transformer_overrides``:
        transformer config values to run with (e.g. ``attention_impl``, ``unroll_blocks``).
        """
        from acestep_jax.convert.checkpoint import load_component
        from acestep_jax.convert.components import COMPONENTS
        from acestep_jax.convert.release import read_manifest, resolve_checkpoint

        ckpt = resolve_checkpoint(spec, param_dtype=param_dtype or "float32", progress=progress)
        manifest = read_manifest(ckpt)
        missing = sorted(set(COMPONENTS) - set(manifest["components"]))
        if missing:
            raise ValueError(f"checkpoint {ckpt} lacks components {missing} needed for sampling")
        overrides = {"dtype": dtype, **(transformer_overrides or {})}
        if param_dtype is not None:
            overrides["param_dtype"] = param_dtype
        transformer = load_component(transformer or ckpt / "transformer", COMPONENTS["transformer"], mesh=mesh,
                                     **overrides)
        pipe = cls(transformer, *load_conditioning_models(ckpt, mesh=mesh, lyrics_vocab=lyrics_vocab,
                                                          codec_dtype=codec_dtype), mesh=mesh)
        pipe.checkpoint = ckpt
        return pipe

    @classmethod
    def random(cls, preset: str = "tiny", seed: int = 0, *, dtype: str = "float32",
               lyrics_vocab: str | os.PathLike | None = None, mesh=None, **kwargs) -> ACEStepPipeline:
        """Randomly initialised models of a preset (``tiny`` for demos and tests, ``full`` for
        benchmarks); nothing is downloaded unless lyrics are given without a local vocabulary.
        ``kwargs`` go to :func:`acestep_jax.presets.random_models` (``param_dtype``, ``codec_dtype``, ...)."""
        from acestep_jax.presets import random_models

        transformer, codec, text_encoder, prompt_tokenizer = random_models(preset, seed, dtype=dtype, **kwargs)
        return cls(transformer, codec, text_encoder, prompt_tokenizer, LazyLyricTokenizer(lyrics_vocab), mesh=mesh)

    # ------------------------------------------------------------------ conditioning
    def encode_prompts(self, prompts: Sequence[str], *, erg_null: bool = True):
        """Prompt encoder states ``[B, L, D]``, mask ``[B, L]`` and (``erg_null``) the ERG-tag null states."""
        ids, mask = self.prompt_tokenizer(list(prompts))
        length = _bucket(ids.shape[1], TEXT_BUCKET, self.prompt_tokenizer.max_length)
        ids, mask = self.prompt_tokenizer(list(prompts), pad_to=length)
        ids, mask = jnp.asarray(ids), jnp.asarray(mask)
        states = _encode_text(self.text_encoder, ids, mask, erg=False)
        null = _encode_text(self.text_encoder, ids, mask, erg=True) if erg_null else None
        return states, mask, null

    def tokenize_lyrics(self, lyrics: Sequence[str], what: str = "lyrics"):
        """Lyric ids and mask ``[B, L]`` (``L`` bucketed); empty lyrics give the reference's ``[0]``, mask 0.

        Lyrics longer than :data:`~acestep_jax.text.lyrics.MAX_TOKENS` raise ValueError.
        """
        rows, seen = [], {}
        for i, text in enumerate(lyrics):
            if text not in seen:  # a batch often repeats one text
                seen[text] = self.lyric_tokenizer.encode(text, MAX_LYRIC_TOKENS) if text else []
                check_lyric_length(len(seen[text]), f"{what}[{i}]", len(text), counted_to_limit=True)
            rows.append(seen[text])
        length = _bucket(max([len(r) for r in rows] + [1]), LYRIC_BUCKET)
        ids = np.zeros((len(rows), length), np.int32)
        mask = np.zeros((len(rows), length), np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return jnp.asarray(ids), jnp.asarray(mask)

    def encode_audio(self, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None):
        """Latents ``[1, 8, 16, T]`` of an audio file or a ``[2, N]`` array at ``sample_rate``."""
        if isinstance(audio, (str, os.PathLike)):
            audio, sample_rate = load_audio(audio)
        elif sample_rate is None:
            raise ValueError("sample_rate is required with an audio array")
        latents, _ = self.codec.encode(np.asarray(audio, np.float32)[None], sample_rate)
        return latents

    # ------------------------------------------------------------------ LoRA
    @property
    def loras(self) -> list[MergedLora]:
        """The adapters merged into the transformer, in merge order."""
        return [] if self._lora is None else list(self._lora.adapters)

    def set_loras(self, specs: Sequence[LoraSpec]) -> None:
        """Merge these PEFT/diffusers LoRAs into the transformer, in order, replacing the current
        ones (an empty list removes them; the original weights come back exactly)."""
        from acestep_jax.lora import merge_loras, unmerge_lora

        specs = list(specs)
        if specs == ([] if self._lora is None else self._lora.specs):
            return
        if self._lora is not None:
            unmerge_lora(self.transformer, self._lora)
            self._lora = None
        if specs:
            self._lora = merge_loras(self.transformer, specs)

    def set_lora(self, path: str | os.PathLike | None, weight: float = 1.0, scale_mode: str = "reference") -> None:
        """Merge one LoRA (see :meth:`set_loras`); ``None`` removes the current ones."""
        from acestep_jax.lora import LoraSpec

        self.set_loras([] if path is None else [LoraSpec(path, weight, scale_mode)])

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[str],
        lyrics: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        *,
        seeds: Sequence[int] | None = None,
        retake_seeds: Sequence[int] | None = None,
        noise: Noise | None = None,
        src_audio: str | os.PathLike | np.ndarray | None = None,
        src_sample_rate: int | None = None,
        target_prompts: Sequence[str] | None = None,
        target_lyrics: Sequence[str] | None = None,
        sample_rate: int = OUTPUT_SAMPLE_RATE,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Generation:
        """Generate one batch; ``prompts``/``lyrics`` hold one string per item (or one for all).

        ``params``: one :class:`SamplingParams` for all items or one per item (a mixed batch,
        see :func:`acestep_jax.sampling.generate`). ``src_audio`` is the source of
        retake-from-audio/repaint/extend/edit and the reference of audio2audio.
        ``target_*`` are the edit task's target prompt/lyrics. ``batch_size`` defaults to
        the longest of ``prompts``, ``lyrics``, ``seeds`` and ``params``. ``progress``
        shows a bar of sampling steps (a host callback per step).
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        prompts, lyrics = list(prompts), list(lyrics)
        n_params = 1 if isinstance(params, SamplingParams) else len(params)
        b = batch_size or max(len(prompts), len(lyrics), len(seeds or ()), n_params, 1)
        items = item_params(params, b)
        params = items[0]  # the batch's shared structure
        prompts, lyrics = _broadcast("prompts", prompts, b), _broadcast("lyrics", lyrics, b)
        if params.task in SOURCE_TASKS and src_audio is None:
            raise ValueError(f"task {params.task!r} needs source audio (src_audio / --src-audio)")
        if seeds is None:
            seeds = random_seeds(b)
        seeds = _broadcast("seeds", [int(s) for s in seeds], b)
        if retake_seeds is None:
            retake_seeds = random_seeds(b)
        retake_seeds = _broadcast("retake_seeds", [int(s) for s in retake_seeds], b)

        lyric_ids, lyric_mask = self.tokenize_lyrics(lyrics)  # checks the lengths before any model runs
        if params.task == "edit":
            if target_prompts is None or target_lyrics is None:
                raise ValueError("task 'edit' needs target prompts and target lyrics")
            t_ids, t_lmask = self.tokenize_lyrics(_broadcast("target_lyrics", list(target_lyrics), b),
                                                  "target_lyrics")
        use_null = any(p.use_erg_tag and p.do_cfg for p in items)
        text, text_mask, text_null = self.encode_prompts(prompts, erg_null=use_null)
        cond = Conditioning(text=text, text_mask=text_mask, lyric_ids=lyric_ids, lyric_mask=lyric_mask,
                            speaker=jnp.zeros((b, self.transformer.cfg.speaker_embedding_dim), jnp.float32), text_null=text_null)
        if src_audio is not None:
            src = self.encode_audio(src_audio, src_sample_rate)
            cond = dataclasses.replace(cond, src_latents=jnp.repeat(src, b, axis=0))
        if params.task == "edit":
            t_text, t_mask, _ = self.encode_prompts(_broadcast("target_prompts", list(target_prompts), b),
                                                    erg_null=False)
            cond = dataclasses.replace(cond, target_text=t_text, target_text_mask=t_mask, target_lyric_ids=t_ids,
                                       target_lyric_mask=t_lmask, target_speaker=cond.speaker)
        if noise is None:
            noise = Noise.from_seeds(seeds, retake_seeds)
        timings["conditioning"] = time.perf_counter() - start

        start = time.perf_counter()
        with step_bar(disable=not progress):
            # text2music/retake lengths are known here: keep the loop's padding, so the
            # decode compiles per padded length only (source tasks end where the loop says)
            own = all(p.task in ("text2music", "retake") for p in items)
            latents = generate(self.transformer, items, cond, noise, mesh=self.mesh, progress=progress,
                               trim=not own)
            latents = jax.block_until_ready(latents)
        timings["diffusion"] = time.perf_counter() - start

        frames = [min(item_frames(p, cond), latents.shape[-1]) if own else latents.shape[-1] for p in items]
        start = time.perf_counter()
        audio = self.decode_items(latents, frames, sample_rate)
        timings["decode"] = time.perf_counter() - start
        record = {"sample_rate": sample_rate, "lora": [a.spec.to_record() for a in self.loras]}
        # the reference's omega mean shift averages over the whole batch, so an item is
        # reproduced by rerunning its whole batch: every record keeps the batch's seeds
        if not params.batch_invariant:
            record.update(batch_size=b, batch_seeds=seeds, batch_retake_seeds=retake_seeds)
        per_item = [{**dataclasses.asdict(items[i]), **record, "prompt": prompts[i], "lyrics": lyrics[i],
                     "seed": seeds[i], "retake_seed": retake_seeds[i], "batch_index": i} for i in range(b)]
        if params.task == "edit":
            for i, item in enumerate(per_item):
                item.update(target_prompt=list(target_prompts)[i % len(target_prompts)],
                            target_lyrics=list(target_lyrics)[i % len(target_lyrics)])
        lengths = [resampled_length(f * FRAME_SAMPLES, SAMPLE_RATE, sample_rate) for f in frames]
        latents = np.asarray(latents)[..., : max(frames)]
        return Generation(audio=audio, sample_rate=sample_rate, latents=latents, params=per_item,
                          timings=timings, lengths=lengths)

    def decode(self, latents, sample_rate: int = OUTPUT_SAMPLE_RATE) -> np.ndarray:
        """Latents → audio ``[B, 2, N]``; long outputs decode in overlapping windows (bounded memory)."""
        window = DECODE_WINDOW_FRAMES if frames_to_seconds(latents.shape[-1]) > OVERLAP_DECODE_SECONDS else None
        return self.codec.decode(latents, sample_rate, window=window)

    def decode_items(self, latents, frames: Sequence[int], sample_rate: int = OUTPUT_SAMPLE_RATE) -> np.ndarray:
        """Latents ``[B, 8, 16, T]`` (``T`` may be padded) → audio ``[B, 2, N]`` (``N`` for the
        longest item), item ``i`` decoded as its first ``frames[i]`` frames alone (zero past them).

        One length-masked decode at ``T`` (see :mod:`acestep_jax.codec.codec`): an item's audio
        does not depend on its batch or on ``T``, and the programs depend on ``T`` only, so a
        new duration inside a duration bucket compiles nothing. Outputs longer than
        :data:`OVERLAP_DECODE_SECONDS` (by ``T``) decode in windows.
        """
        b, frames = latents.shape[0], [int(f) for f in frames]
        if len(frames) != b:
            raise ValueError(f"got {len(frames)} item lengths for a batch of {b}")
        t = latents.shape[-1]
        window = DECODE_WINDOW_FRAMES if frames_to_seconds(t) > OVERLAP_DECODE_SECONDS else None
        audio = self.codec.decode(latents, sample_rate, window=window, lengths=frames)
        return audio[..., : resampled_length(max(frames) * FRAME_SAMPLES, SAMPLE_RATE, sample_rate)]


def load_conditioning_models(ckpt: str | os.PathLike, *, mesh=None, lyrics_vocab=None, codec_dtype: str = "float32"):
    """``(codec, text_encoder, prompt_tokenizer, lyric_tokenizer)`` of a converted checkpoint folder:
    everything but the transformer (sampling and training preprocessing share it). The codec
    computes and stores its weights in ``codec_dtype``."""
    from acestep_jax.convert.checkpoint import load_component
    from acestep_jax.convert.components import COMPONENTS
    from acestep_jax.convert.release import LYRICS_VOCAB, TOKENIZER_DIR

    ckpt = Path(ckpt)
    text_encoder = load_component(ckpt / "text_encoder", COMPONENTS["text_encoder"], mesh=mesh, dtype="float32")
    dt = {"dtype": codec_dtype, "param_dtype": codec_dtype}
    codec = MusicCodec.from_parts(load_component(ckpt / "dcae", COMPONENTS["dcae"], mesh=mesh, **dt),
                                  load_component(ckpt / "vocoder", COMPONENTS["vocoder"], mesh=mesh, **dt))
    prompt_tokenizer = PromptTokenizer.from_folder(ckpt / TOKENIZER_DIR)
    vocab = lyrics_vocab or (ckpt / LYRICS_VOCAB if (ckpt / LYRICS_VOCAB).is_file() else None)
    return codec, text_encoder, prompt_tokenizer, LazyLyricTokenizer(vocab, ckpt)


class LazyLyricTokenizer:
    """Finds the lyric vocabulary (and imports the optional language packages) at the first lyrics."""

    def __init__(self, vocab=None, checkpoint_dir=None):
        self.vocab, self.checkpoint_dir, self._tok = vocab, checkpoint_dir, None

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        if self._tok is None:
            from acestep_jax.text.lyrics import LyricTokenizer, find_lyrics_vocab

            self._tok = LyricTokenizer(find_lyrics_vocab(self.vocab, checkpoint_dir=self.checkpoint_dir))
        return self._tok.encode(text, limit)


def _broadcast(name: str, values: list, b: int) -> list:
    if len(values) == 1:
        return values * b
    if len(values) != b:
        raise ValueError(f"{name} has {len(values)} entries; give one or one per batch item ({b})")
    return values
