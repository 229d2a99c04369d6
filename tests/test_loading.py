"""The one model loader: options checked before loading, the mesh whenever several processes run."""

import pytest

from acestep_jax import loading
from acestep_jax.errors import UsageError
from acestep_jax.loading import ModelOptions, load_pipeline


@pytest.mark.parametrize("options, message", [
    (ModelOptions(dtype="float16"), "--dtype must be one of"),
    (ModelOptions(codec_dtype="float16"), "--codec-dtype must be one of"),
    (ModelOptions(tiny_random=True, transformer="x"), "--transformer needs --checkpoint"),
    (ModelOptions(transformer="/nonexistent"), "--transformer /nonexistent is not a folder"),
    (ModelOptions(lyrics_vocab="/nonexistent.json"), "--lyrics-vocab /nonexistent.json does not exist"),
])
def test_bad_options_fail_before_loading(options, message):
    with pytest.raises(UsageError, match=message):
        options.validate()


@pytest.mark.parametrize("shard, processes, meshed", [(False, 1, False), (True, 1, True), (False, 2, True)])
def test_mesh_when_sharding_or_multi_process(shard, processes, meshed, monkeypatch):
    import jax

    from acestep_jax import pipeline, sharding

    built = []
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(sharding, "make_mesh", lambda **kw: built.append(kw) or "mesh")
    monkeypatch.setattr(pipeline.ACEStepPipeline, "random", classmethod(lambda cls, *a, mesh=None, **k: mesh))
    assert load_pipeline(ModelOptions(tiny_random=True, shard=shard, compile_cache=""), lyrics=False) == (
        "mesh" if meshed else None)
    assert built == ([{"data": -1}] if meshed else [])


def test_options_from_the_command_line():
    from acestep_jax.cli.sample import parse_args

    options = ModelOptions.from_args(parse_args(["--tiny-random", "--shard", "--compile-cache", ""]))
    assert options == ModelOptions(tiny_random=True, shard=True, compile_cache="")
    assert options.record() == {"checkpoint": None, "tiny_random": True, "dtype": "float32", "transformer": None,
                                "codec_dtype": "float32"}
    assert ModelOptions.from_args(parse_args(["--tiny-random", "--codec-dtype", "bfloat16"])).codec_dtype == "bfloat16"


@pytest.mark.parametrize("name, platform, dtype", [
    ("auto", "cpu", "float32"), ("auto", "gpu", "bfloat16"), ("auto", "tpu", "float32"),
    ("float32", "gpu", "float32"), ("bfloat16", "cpu", "bfloat16"),
])
def test_codec_dtype_auto_is_bfloat16_on_gpu_only(name, platform, dtype):
    assert loading.resolve_codec_dtype(name, platform) == dtype


def test_codec_dtype_reaches_the_pipeline(monkeypatch):
    from acestep_jax import pipeline

    seen = []
    monkeypatch.setattr(pipeline.ACEStepPipeline, "random",
                        classmethod(lambda cls, *a, codec_dtype=None, **k: seen.append(codec_dtype)))
    load_pipeline(ModelOptions(tiny_random=True, codec_dtype="bfloat16", compile_cache=""), lyrics=False)
    load_pipeline(ModelOptions(tiny_random=True, compile_cache=""), lyrics=False)
    assert seen == ["bfloat16", loading.resolve_codec_dtype("auto")]
    assert loading.HUB_REPO == ModelOptions().checkpoint
