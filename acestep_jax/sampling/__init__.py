"""Flow-matching sampling for ACE-Step v1.

Entry point::

    from acestep_jax.sampling import Conditioning, Noise, SamplingParams, generate

    latents = generate(model, SamplingParams(duration=30.0, infer_steps=60), cond,
                       noise=[seed0, seed1], mesh=None)   # [B, 8, 16, T]

``model`` is an :class:`~acestep_jax.models.transformer.ACEStepTransformer`;
``cond`` holds the prompt encoder states, lyric ids and, for the source-based tasks,
``src_latents`` (see :class:`Conditioning`); ``noise`` gives per-item seeds/keys or
explicit arrays (:class:`Noise`) to replay recorded draws. Tasks: ``text2music``,
``retake``, ``repaint``, ``extend``, ``audio2audio`` (reference latents in
``src_latents``, ``ref_audio_strength``) and ``edit`` (FlowEdit: ``target_*`` fields,
``n_min``/``n_max``/``n_avg``). The loop is one jitted program per structure
(scheduler, guidance mode, ERG flags, shapes); scales, timesteps and seeds are traced.

Noise: by default every draw is per batch item (``jax.random.key(seed_i)``), so an
item's noise does not depend on its batch position. The reference's omega mean shift
(euler/heun) averages over the whole batch, so with ``omega_scale != 0`` items influence
each other slightly; ``SamplingParams(batch_invariant=True)`` takes it per item, and then
each item equals the same request run alone.

A batch may mix requests: pass one :class:`SamplingParams` per item. Items may differ in
:data:`~acestep_jax.sampling.params.ITEM_FIELDS` (duration, guidance scales and interval,
omega, ERG switches, retake variance), which are traced per item; they must agree on
:meth:`SamplingParams.structure` (task, scheduler, steps, guidance type, bucketing, ...),
which selects the compiled program together with the batch size and latent length.

Bucketing (``SamplingParams(bucket=True)``) pads latents to :func:`bucket_frames`;
padded frames (and, in a mixed batch, the frames past a shorter item's length) are
masked in the loop and isolated in the transformer (``decode(isolate_padding=True)``),
so a padded item equals its unpadded run.

Modules: :mod:`.params` (arguments, conditioning, noise), :mod:`.inputs` (the loops'
typed inputs), :mod:`.schedulers` (tables and steps), :mod:`.guidance` (APG, CFG,
CFG-Zero*, double condition, guidance interval), :mod:`.sampler` (the loops),
:mod:`.tasks` (task set-up, :func:`generate`, :func:`bucket_frames`),
:mod:`.compile_cache`.
"""

from acestep_jax.sampling.compile_cache import enable_compilation_cache
from acestep_jax.sampling.inputs import LoopInputs
from acestep_jax.sampling.params import (
    ITEM_FIELDS,
    Conditioning,
    Noise,
    SamplingParams,
    seconds_to_frames,
)
from acestep_jax.sampling.sampler import LoopConfig, run_loop
from acestep_jax.sampling.tasks import bucket_frames, generate, prepare

__all__ = [
    "ITEM_FIELDS",
    "Conditioning",
    "LoopConfig",
    "LoopInputs",
    "Noise",
    "SamplingParams",
    "bucket_frames",
    "enable_compilation_cache",
    "generate",
    "prepare",
    "run_loop",
    "seconds_to_frames",
]
