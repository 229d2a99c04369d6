"""Loading the generation models: one way for ``sample.py``, ``serve.py``, job files and benchmarks."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields

from acestep_jax.convert.hub import HUB_REPO
from acestep_jax.errors import UsageError

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float32")
CODEC_DTYPES = ("auto", *DTYPES)
# ``--codec-dtype auto``: the codec's dtype per platform. bfloat16 drifts no more than the
# reference's own bfloat16 codec on the same weights (benchmarks/RESULTS.md, "Codec in bfloat16").
AUTO_CODEC_DTYPE = {"gpu": "bfloat16", "cuda": "bfloat16", "rocm": "bfloat16"}


def resolve_codec_dtype(codec_dtype: str, platform: str | None = None) -> str:
    """The codec dtype that ``codec_dtype`` names on ``platform`` (default: JAX's backend);
    ``auto`` is :data:`AUTO_CODEC_DTYPE`'s entry, float32 elsewhere."""
    if codec_dtype != "auto":
        return codec_dtype
    if platform is None:
        import jax

        platform = jax.default_backend()
    return AUTO_CODEC_DTYPE.get(platform, "float32")


@dataclass(frozen=True)
class ModelOptions:
    """Which models to load and how: a checkpoint (folder or Hub id) or tiny random models.

    ``shard``: split batches over every device (``data`` axis); several processes
    (``jax.distributed``) always shard. ``compile_cache``: the persistent XLA cache folder
    (``None``: the cache folder's ``xla/``; ``""``: off). ``random_preset`` (benchmarks):
    random weights of that preset (``tiny``, ``full``) at ``dtype``, with
    ``transformer_overrides`` (``(key, value)`` pairs) applied to its transformer config.
    ``codec_dtype``: the DC-AE and vocoder's compute and storage dtype (``auto``:
    :func:`resolve_codec_dtype`).
    """

    checkpoint: str = HUB_REPO
    tiny_random: bool = False
    dtype: str = "bfloat16"
    param_dtype: str | None = None
    lyrics_vocab: str | None = None
    transformer: str | None = None
    shard: bool = False
    compile_cache: str | None = None
    random_preset: str | None = None
    transformer_overrides: tuple[tuple[str, object], ...] = ()
    codec_dtype: str = "auto"

    @classmethod
    def from_args(cls, args) -> ModelOptions:
        """The options of the command line's model flags (:func:`acestep_jax.cli.common.add_model_flags`)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def validate(self) -> None:
        """Raise :class:`UsageError` for options that cannot load (before anything loads)."""
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in (None, *DTYPES):
                raise UsageError(f"--{name.replace('_', '-')} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.codec_dtype not in CODEC_DTYPES:
            raise UsageError(f"--codec-dtype must be one of {CODEC_DTYPES}, got {self.codec_dtype!r}")
        if self.transformer and self.tiny_random:
            raise UsageError("--transformer needs --checkpoint (the other models come from it), not --tiny-random")
        if self.transformer and not os.path.isdir(self.transformer):
            raise UsageError(f"--transformer {self.transformer} is not a folder")
        if self.lyrics_vocab:
            if os.path.isdir(self.lyrics_vocab):
                raise UsageError(f"--lyrics-vocab {self.lyrics_vocab} is a folder; give its vocab.json")
            if not os.path.isfile(self.lyrics_vocab):
                raise UsageError(f"--lyrics-vocab {self.lyrics_vocab} does not exist")
            try:
                from acestep_jax.text.lyrics.tokenizer import read_vocab
            except ImportError:  # no lyrics extra: only lyrics need the vocabulary, and they say so
                return
            read_vocab(self.lyrics_vocab)

    @property
    def checkpoint_dir(self) -> str | None:
        """The local checkpoint folder, if the models come from one (it may hold the lyric vocabulary)."""
        return self.checkpoint if not self.tiny_random and os.path.isdir(self.checkpoint) else None

    def record(self) -> dict:
        """What outputs record about the models that made them."""
        return {"checkpoint": None if self.tiny_random else self.checkpoint, "tiny_random": self.tiny_random,
                "dtype": "float32" if self.tiny_random else self.dtype, "transformer": self.transformer,
                "codec_dtype": resolve_codec_dtype(self.codec_dtype)}


def load_pipeline(options: ModelOptions, progress: bool = True, *, lyrics: bool = True):
    """The :class:`~acestep_jax.pipeline.ACEStepPipeline` of ``options``, with the compilation
    cache enabled and a ``data`` mesh when sharding (or running as several processes).
    ``lyrics``: find the lyric vocabulary now, so a missing one fails here rather than at the
    first request (``sample.py`` checks its lyrics before loading instead)."""
    import jax

    from acestep_jax.models.transformer import gpu_transformer_settings
    from acestep_jax.pipeline import ACEStepPipeline
    from acestep_jax.sampling import enable_compilation_cache

    if options.compile_cache != "":
        enable_compilation_cache(options.compile_cache)
    mesh = None
    if options.shard or jax.process_count() > 1:
        from acestep_jax.sharding import make_mesh

        mesh = make_mesh(data=-1)
    start = time.perf_counter()
    codec_dtype, on_device = resolve_codec_dtype(options.codec_dtype), gpu_transformer_settings()
    if options.random_preset or options.tiny_random:
        pipe = ACEStepPipeline.random(options.random_preset or "tiny", 0, lyrics_vocab=options.lyrics_vocab,
                                      mesh=mesh, codec_dtype=codec_dtype,
                                      transformer_overrides={**on_device, **dict(options.transformer_overrides)},
                                      **({"dtype": options.dtype, "param_dtype": options.param_dtype or options.dtype}
                                         if options.random_preset else {}))
    else:
        pipe = ACEStepPipeline.from_checkpoint(options.checkpoint, dtype=options.dtype,
                                               param_dtype=options.param_dtype, mesh=mesh,
                                               lyrics_vocab=options.lyrics_vocab, transformer=options.transformer,
                                               progress=progress, codec_dtype=codec_dtype, transformer_overrides=on_device)
    if lyrics:
        pipe.tokenize_lyrics(["la"])
    log.info("models loaded in %.1f s", time.perf_counter() - start)
    return pipe
