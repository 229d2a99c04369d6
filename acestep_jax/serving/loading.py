"""Loading the models a service keeps resident (the job-file runner's and the server's)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass

from acestep_jax.convert.release import HUB_REPO

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelOptions:
    """Which models to load and how: a checkpoint (folder or Hub id) or tiny random models."""

    checkpoint: str = HUB_REPO
    tiny_random: bool = False
    dtype: str = "bfloat16"
    param_dtype: str | None = None
    lyrics_vocab: str | None = None
    transformer: str | None = None
    shard: bool = False
    compile_cache: str | None = None  # folder; None: the cache folder's xla/; "": off

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})

    def validate(self) -> None:
        """Raise ValueError / FileNotFoundError for options that cannot load (before anything loads)."""
        if self.transformer and self.tiny_random:
            raise ValueError("--transformer needs --checkpoint (the other models come from it), not --tiny-random")
        if self.transformer and not os.path.isdir(self.transformer):
            raise FileNotFoundError(f"--transformer {self.transformer} is not a folder")
        if self.lyrics_vocab and not os.path.isfile(self.lyrics_vocab):
            raise FileNotFoundError(f"--lyrics-vocab {self.lyrics_vocab} does not exist")

    def record(self) -> dict:
        """What outputs record about the models that made them."""
        return {"checkpoint": None if self.tiny_random else self.checkpoint, "tiny_random": self.tiny_random,
                "dtype": "float32" if self.tiny_random else self.dtype, "transformer": self.transformer}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--checkpoint", default=HUB_REPO,
                   help="converted checkpoint folder, reference-layout folder (converted once and cached) or Hub id")
    g.add_argument("--tiny-random", action="store_true", help="tiny random models instead of a checkpoint (demo)")
    g.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="transformer compute dtype")
    g.add_argument("--param-dtype", choices=("bfloat16", "float32"), help="transformer storage dtype")
    g.add_argument("--lyrics-vocab", help="lyric vocabulary (default: in the checkpoint, else downloaded)")
    g.add_argument("--transformer", help="a fine-tuned transformer folder replacing the checkpoint's")
    g.add_argument("--shard", action="store_true", help="shard each batch over all local devices (data axis)")
    g.add_argument("--compile-cache", help="persistent XLA compilation cache folder (default: the cache "
                   "folder's xla/, see ACESTEP_JAX_CACHE; '' disables)")


def load_pipeline(options: ModelOptions, progress: bool = True):
    """The :class:`~acestep_jax.pipeline.ACEStepPipeline` of ``options``, with the compilation
    cache enabled and the lyric vocabulary found (so a missing one fails now, not at a request)."""
    from acestep_jax.pipeline import ACEStepPipeline
    from acestep_jax.sampling import enable_compilation_cache

    if options.compile_cache != "":
        enable_compilation_cache(options.compile_cache)
    mesh = None
    if options.shard:
        from acestep_jax.sharding import make_mesh

        mesh = make_mesh(data=-1)
    start = time.perf_counter()
    if options.tiny_random:
        pipe = ACEStepPipeline.random("tiny", 0, lyrics_vocab=options.lyrics_vocab, mesh=mesh)
    else:
        pipe = ACEStepPipeline.from_checkpoint(options.checkpoint, dtype=options.dtype,
                                               param_dtype=options.param_dtype, mesh=mesh,
                                               lyrics_vocab=options.lyrics_vocab, transformer=options.transformer,
                                               progress=progress)
    pipe.tokenize_lyrics(["la"])
    log.info("models loaded in %.1f s", time.perf_counter() - start)
    return pipe
