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
item's noise does not depend on its batch position. Note the reference's omega
mean-shift (euler/heun) averages over the whole batch, so with ``omega_scale != 0`` items
still influence each other slightly, exactly as in the reference.

Bucketing (``SamplingParams(bucket=True)``) pads latents to :func:`bucket_frames` and
masks the padding in the loop (attention mask, mean shift over valid frames, zeroed
predictions and latents). The transformer still mixes padded frames into valid ones
through PatchEmbed's GroupNorm (statistics over all frames) and GLUMBConv's depthwise
time convolution; bucketed results equal unpadded ones once both use the frame mask.

Modules: :mod:`.schedulers` (tables and steps), :mod:`.guidance` (APG, CFG,
CFG-Zero*, double condition, guidance interval), :mod:`.sampler` (the loops),
:mod:`.tasks` (task set-up, :func:`generate`, :func:`bucket_frames`),
:mod:`.compile_cache`.
"""

from acestep_jax.sampling.compile_cache import enable_compilation_cache
from acestep_jax.sampling.params import Conditioning, Noise, SamplingParams, seconds_to_frames
from acestep_jax.sampling.sampler import LoopConfig, run_loop
from acestep_jax.sampling.tasks import bucket_frames, generate, prepare

__all__ = [
    "Conditioning",
    "LoopConfig",
    "Noise",
    "SamplingParams",
    "bucket_frames",
    "enable_compilation_cache",
    "generate",
    "prepare",
    "run_loop",
    "seconds_to_frames",
]
