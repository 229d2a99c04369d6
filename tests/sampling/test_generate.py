"""generate(): sharding, per-item noise, compile reuse, bucketing and argument checks."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from acestep_jax.sampling import (
    Noise,
    SamplingParams,
    bucket_frames,
    enable_compilation_cache,
    generate,
    prepare,
    sampler,
    seconds_to_frames,
)
from acestep_jax.sampling.params import draw
from acestep_jax.sharding import make_mesh
from tests.helpers import assert_close
from tests.sampling.conftest import make_cond

FAST = SamplingParams(duration=2.0, infer_steps=4, guidance_interval=1.0, scheduler_type="pingpong")
FRAMES = seconds_to_frames(FAST.duration)


def pair(io):
    """The golden conditioning cut or repeated to the two items these tests run."""
    return make_cond(io, batch=2)


def test_sharded_batch_equals_unsharded(tiny_model, pipeline_golden):
    cond = make_cond(pipeline_golden.io, batch=8)
    params = FAST.replace(scheduler_type="euler")  # the omega mean-shift couples the whole batch
    seeds = list(range(100, 108))
    ref = np.asarray(generate(tiny_model, params, cond, seeds))
    mesh = make_mesh(data=8)
    out = generate(tiny_model, params, cond, seeds, mesh=mesh)
    assert len(out.sharding.device_set) == 8
    assert_close(out, ref, what="sharded vs unsharded")
    with pytest.raises(ValueError, match="divisible"):
        generate(tiny_model, params, make_cond(pipeline_golden.io, batch=4), seeds[:4], mesh=mesh)


def test_item_noise_independent_of_batch(tiny_model, pipeline_golden):
    io = pipeline_golden.io
    # pingpong has no batch-wide mean shift, so items are independent
    both = np.asarray(generate(tiny_model, FAST, pair(io), [5, 6]))
    one = jax.tree.map(lambda a: a[1:], pair(io))
    alone = np.asarray(generate(tiny_model, FAST, one, [6]))
    assert_close(alone[0], both[1], what="item 1 alone vs in batch")
    other = np.asarray(generate(tiny_model, FAST, pair(io), [5, 7]))
    assert_close(other[0], both[0], what="item 0 with another partner")
    assert np.abs(other[1] - both[1]).max() > 1e-2


def test_scales_and_seeds_reuse_compile(tiny_model, pipeline_golden):
    cond = pair(pipeline_golden.io)
    params = FAST.replace(scheduler_type="euler", guidance_interval_decay=1.0)
    sampler._compiled.cache_clear()
    generate(tiny_model, params, cond, [1, 2])
    lc = prepare(params, cond, Noise.from_seeds([1, 2]))[0]
    fn = sampler._compiled(nnx.split(tiny_model)[0], lc)
    assert fn._cache_size() == 1
    for change in (
        {"guidance_scale": 7.0}, {"omega_scale": 3.0}, {"guidance_interval": 0.5},
        {"min_guidance_scale": 1.5}, {"guidance_interval_decay": 0.0},
    ):
        generate(tiny_model, params.replace(**change), cond, [3, 4])
    assert sampler._compiled.cache_info().currsize == 1
    assert fn._cache_size() == 1


def test_key_noise_prefix_stable():
    """Key draws of a padded length agree with the unpadded draws on the valid frames."""
    noise = Noise.from_seeds([3, 4])
    for kind in ("initial", "steps", "edit_forward"):
        short = draw(noise, kind, 2, (8, 16, 21))
        long = draw(noise, kind, 2, (8, 16, 128))
        np.testing.assert_array_equal(np.asarray(long)[..., :21], np.asarray(short))
    assert np.abs(np.asarray(draw(noise, "initial", 0, (8, 16, 5)) - draw(noise, "retake", 0, (8, 16, 5)))).min() > 0


def test_bucket_frames():
    assert bucket_frames(1) == 128 and bucket_frames(128) == 128 and bucket_frames(129) == 256
    with pytest.raises(ValueError):
        bucket_frames(0)


def test_bucketed_run_equals_unpadded(tiny_model, pipeline_golden):
    """Padding frames are masked in the sampler (mean shift, guidance, latents) and isolated in
    the transformer (``decode(isolate_padding=True)``), so a bucketed run equals the unpadded
    one on the valid frames."""
    cond = pair(pipeline_golden.io)
    params = FAST.replace(scheduler_type="heun", omega_scale=10.0)  # mean shift over valid frames, both stages
    ref = np.asarray(generate(tiny_model, params, cond, [1, 2]))
    out = np.asarray(generate(tiny_model, params.replace(bucket=True), cond, [1, 2]))
    assert out.shape == ref.shape == (2, 8, 16, FRAMES)
    assert_close(out, ref, rtol=1e-3, atol=1e-3, what="bucketed heun")


def test_gpu_frame_multiple_run_equals_unpadded(tiny_model, pipeline_golden, monkeypatch):
    """On GPU the frames are padded (masked) to a multiple of 16; the result is the unpadded one."""
    from acestep_jax.sampling import tasks

    assert tasks.frame_multiple("cuda") == 16 and tasks.frame_multiple("cpu") == 1
    cond = pair(pipeline_golden.io)
    params = FAST.replace(scheduler_type="euler", omega_scale=10.0)
    ref = np.asarray(generate(tiny_model, params, cond, [1, 2]))
    monkeypatch.setattr(tasks, "frame_multiple", lambda platform: 16)
    assert FRAMES % 16 and prepare(params, cond, Noise.from_seeds([1, 2]), 16)[1].latents.x.shape[-1] == 32
    out = np.asarray(generate(tiny_model, params, cond, [1, 2]))
    assert out.shape == ref.shape == (2, 8, 16, FRAMES)
    assert_close(out, ref, rtol=1e-3, atol=1e-3, what="frames padded to 16")


def test_validation_errors(tiny_model, pipeline_golden):
    cond = pair(pipeline_golden.io)
    # source latents as long as FAST's duration, so the windows below sit where the messages say
    src = dataclasses.replace(cond, src_latents=np.zeros((2, 8, 16, FRAMES), np.float32))
    bad = [
        (FAST.replace(duration=0.0), cond, "duration"),
        (FAST.replace(duration=-3.0), cond, "duration"),
        (FAST.replace(infer_steps=0), cond, "infer_steps"),
        (FAST.replace(scheduler_type="ddim"), cond, "scheduler_type"),
        (FAST.replace(cfg_type="pag"), cond, "cfg_type"),
        (FAST.replace(task="remix"), cond, "task"),
        (FAST.replace(task="repaint", repaint_start=0.5, repaint_end=1.0), cond, "source latents"),
        (FAST.replace(task="edit"), cond, "source latents"),
        (FAST.replace(task="extend", repaint_start=-1.0, repaint_end=2.0), cond, "source latents"),
        (FAST.replace(task="audio2audio"), cond, "source latents"),
        (FAST.replace(task="repaint", repaint_start=0.5, repaint_end=3.0), src, "outside"),
        (FAST.replace(task="repaint", repaint_start=1.0, repaint_end=0.5), src, "after"),
        (FAST.replace(task="extend", repaint_start=0.0, repaint_end=1.0), src, "extend"),
        (FAST.replace(task="edit", n_min=0.8, n_max=0.2), src, "n_min"),
        (FAST.replace(task="repaint", repaint_start=0.5, repaint_end=1.0, retake_variance=0.0), src,
         "retake_variance"),
        (FAST.replace(guidance_interval=1.5), cond, "guidance_interval"),
        (FAST.replace(task="edit"), src, "target_text"),
        (FAST.replace(scheduler_type="heun", oss_steps=(1, 3)), cond, "oss_steps"),
        (FAST.replace(task="audio2audio", ref_audio_strength=1.0), src, "ref_audio_strength"),
    ]
    for params, c, match in bad:
        with pytest.raises(ValueError, match=match):
            generate(tiny_model, params, c, [1, 2])
    with pytest.raises(ValueError, match="Noise.initial"):
        short = np.zeros((2, 8, 16, FRAMES - 1), np.float32)
        generate(tiny_model, FAST, cond, Noise(initial=short))
    with pytest.raises(ValueError, match="Noise.steps"):
        generate(tiny_model, FAST, cond, Noise(initial=np.zeros((2, 8, 16, FRAMES), np.float32),
                                               steps=np.zeros((4, 1, 8, 16, FRAMES), np.float32)))
    with pytest.raises(ValueError, match="batch"):
        generate(tiny_model, FAST, dataclasses.replace(cond, lyric_ids=cond.lyric_ids[:1]), [1, 2])


def test_enable_compilation_cache(tmp_path):  # conftest turns the cache back off afterwards
    path = enable_compilation_cache(tmp_path / "xla", min_compile_time_s=2.0)
    assert path.is_dir() and jax.config.jax_compilation_cache_dir == str(path)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.0


def test_step_progress_reports_every_step_and_changes_nothing(tiny_model, pipeline_golden):
    from acestep_jax.sampling.progress import step_bar

    cond = pair(pipeline_golden.io)
    params = FAST.replace(scheduler_type="euler")
    plain = np.asarray(generate(tiny_model, params, cond, [1, 2]))
    with step_bar() as bar:
        shown = np.asarray(jax.block_until_ready(generate(tiny_model, params, cond, [1, 2], progress=True)))
        jax.effects_barrier()
        assert (bar.n, bar.total) == (params.infer_steps, params.infer_steps)
    np.testing.assert_array_equal(shown, plain)


def test_cpu_loop_keeps_no_float32_copy_of_bfloat16_weights(golden, pipeline_golden):
    """On CPU the bfloat16 weights are converted per use, not hoisted out of the step loop."""
    from acestep_jax.models.transformer import ACEStepTransformer, TransformerConfig

    cfg = dataclasses.replace(TransformerConfig.from_dict(golden("transformer").config),
                              dtype="bfloat16", param_dtype="bfloat16")
    model = ACEStepTransformer(cfg, rngs=nnx.Rngs(0))
    cond, noise = pair(pipeline_golden.io), Noise.from_seeds([1, 2])
    lc, inputs, _ = prepare(FAST.replace(scheduler_type="euler"), cond, noise)
    graphdef, state = nnx.split(model)
    weights = sum(x.size for x in jax.tree.leaves(state) if x.dtype == jax.numpy.bfloat16)
    assert sampler.loop_compiler_options("cpu") and sampler.loop_compiler_options("tpu") is None
    assert sampler.loop_compiler_options("gpu") == {"xla_gpu_dot_merger_threshold_mb": 0}

    def temporaries(fn):
        return fn.lower(state, cond, inputs, noise).compile().memory_analysis().temp_size_in_bytes

    hoisting = jax.jit(lambda *a: sampler.text2music_loop(nnx.merge(graphdef, a[0]), lc, *a[1:]))
    # the hoisted float32 copies (4 bytes per weight) outweigh the bfloat16 weights themselves
    assert temporaries(hoisting) - temporaries(sampler._compiled(graphdef, lc)) > 2 * weights
