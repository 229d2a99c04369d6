"""The end-to-end pipeline from a converted checkpoint equals the direct path through each module."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from acestep_jax.codec import DCAEConfig, MusicCodec, VocoderConfig
from acestep_jax.convert import release
from acestep_jax.convert.dcae import load_dcae
from acestep_jax.convert.transformer import load_transformer
from acestep_jax.convert.umt5 import load_umt5
from acestep_jax.convert.vocoder import load_vocoder
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.pipeline import ACEStepPipeline, LazyLyricTokenizer
from acestep_jax.sampling import Conditioning, Noise, SamplingParams, generate
from acestep_jax.text import PromptTokenizer, UMT5Config, umt5_erg_scales
from tests.helpers import assert_close

PROMPTS = ["rock guitar drums", "piano sad"]
PARAMS = SamplingParams(duration=1.5, infer_steps=3, guidance_scale=7.0, scheduler_type="euler")


@pytest.fixture(scope="module")
def converted(reference_dir, tmp_path_factory, lyrics_vocab_path):
    dst = tmp_path_factory.mktemp("converted") / "ckpt"
    release.convert_checkpoint(reference_dir, dst, lyrics_vocab=lyrics_vocab_path, progress=False)
    return dst


@pytest.fixture(scope="module")
def pipe(converted):
    return ACEStepPipeline.from_checkpoint(converted, dtype="float32", progress=False)


def _cfg(folder, cls):
    return cls.from_dict(json.loads((folder / "config.json").read_text()))


def test_converted_pipeline_matches_direct_path(pipe, reference_dir):
    r = reference_dir
    transformer = load_transformer(r / "ace_step_transformer", _cfg(r / "ace_step_transformer", TransformerConfig))
    umt5 = load_umt5(r / "umt5-base", _cfg(r / "umt5-base", UMT5Config))
    codec = MusicCodec.from_parts(load_dcae(r / "music_dcae_f8c8", _cfg(r / "music_dcae_f8c8", DCAEConfig)),
                                  load_vocoder(r / "music_vocoder", _cfg(r / "music_vocoder", VocoderConfig)))
    ids, mask = PromptTokenizer.from_folder(r / "umt5-base")(PROMPTS)  # unbucketed, as the reference
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    text = umt5(ids, mask)
    null = umt5(ids, mask, query_scales=umt5_erg_scales(umt5.cfg.num_layers))
    b = len(PROMPTS)
    cond = Conditioning(text=text, text_mask=mask, lyric_ids=jnp.zeros((b, 1), jnp.int32),
                        lyric_mask=jnp.zeros((b, 1), jnp.int32),
                        speaker=jnp.zeros((b, transformer.cfg.speaker_embedding_dim)),
                        text_null=null)
    noise = Noise.from_seeds([1, 2], [3, 4])
    direct = np.asarray(codec.decode(generate(transformer, PARAMS, cond, noise), 48000))

    out = pipe.generate(PROMPTS, [""], PARAMS, seeds=[1, 2], retake_seeds=[3, 4])
    assert out.audio.shape == direct.shape and out.sample_rate == 48000
    np.testing.assert_allclose(out.audio, direct, rtol=1e-4, atol=1e-4)
    assert [p["seed"] for p in out.params] == [1, 2] and out.params[1]["prompt"] == PROMPTS[1]


def test_lyrics_and_sources(pipe, golden):
    cases = json.loads(golden("lyrics").path("cases.json").read_text())
    lyrics = next(c for c in cases if c["lyrics"])
    out = pipe.generate(["pop"], [lyrics["lyrics"]], PARAMS, seeds=[5])
    ids, mask = pipe.tokenize_lyrics([lyrics["lyrics"]])
    n = len(lyrics["token_ids"])
    assert np.asarray(ids)[0, :n].tolist() == lyrics["token_ids"] and int(mask.sum()) == n
    assert ids.shape[1] % 64 == 0 and np.isfinite(out.audio).all()

    src = out.audio[0]
    repaint = PARAMS.replace(task="repaint", repaint_start=0.2, repaint_end=0.8, retake_variance=0.5)
    edited = pipe.generate(["pop"], [""], repaint, seeds=[5], src_audio=src, src_sample_rate=out.sample_rate)
    assert np.isfinite(edited.audio).all()
    with pytest.raises(ValueError, match="needs source audio"):
        pipe.generate(["pop"], [""], repaint, seeds=[5])


def test_lora_merge_and_unmerge(pipe, tmp_path):
    from flax import nnx

    from acestep_jax.lora import LoraConfig, LoraSpec, add_lora, save_lora

    before = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(pipe.transformer))}
    trained = load_transformer_like(pipe)
    add_lora(trained, LoraConfig(r=2, lora_alpha=4, target_modules=("to_q", "to_k")), nnx.Rngs(1))
    for _, v in nnx.to_flat_state(nnx.state(trained, nnx.LoRAParam)):
        v[...] = jnp.full(v.shape, 0.05, v.dtype)
    save_lora(trained, LoraConfig(r=2, lora_alpha=4, target_modules=("to_q", "to_k")), tmp_path / "lora")
    pipe.set_lora(tmp_path / "lora", 0.5)
    merged = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(pipe.transformer))}
    assert any(not np.allclose(merged[k], before[k]) for k in before)
    assert [a.spec for a in pipe.loras] == [LoraSpec(tmp_path / "lora", 0.5)]
    pipe.set_lora(None)
    after = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(pipe.transformer))}
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


def load_transformer_like(pipe):
    from flax import nnx

    graphdef, state = nnx.split(pipe.transformer)
    return nnx.merge(graphdef, jax_copy(state))


def jax_copy(state):
    import jax

    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def test_fine_tuned_transformer_replaces_the_checkpoints(pipe, tmp_path):
    """``from_checkpoint(transformer=...)`` (``sample.py --transformer``) loads train.py's export."""

    from acestep_jax.convert.checkpoint import save_component

    tuned = load_transformer_like(pipe)
    kernel = tuned.final_layer.linear.kernel
    kernel[...] = kernel[...] * 0.5
    save_component(tmp_path / "transformer", tuned, tuned.cfg)
    ckpt = pipe.checkpoint
    other = ACEStepPipeline.from_checkpoint(ckpt, dtype="float32", transformer=tmp_path / "transformer",
                                            progress=False)
    np.testing.assert_array_equal(np.asarray(other.transformer.final_layer.linear.kernel[...]),
                                  np.asarray(kernel[...]))
    assert np.isfinite(other.generate(["pop"], [""], PARAMS, seeds=[1]).audio).all()


def test_blocks_cut_per_block_generate_the_same(pipe):
    """``transformer_overrides={"unroll_blocks": True}`` (GPU loading) cuts the stacked checkpoint
    into one module per block; the song is the same."""
    per_block = ACEStepPipeline.from_checkpoint(pipe.checkpoint, dtype="float32", progress=False,
                                                transformer_overrides={"unroll_blocks": True})
    assert isinstance(per_block.transformer.blocks, nnx.List)
    assert len(per_block.transformer.blocks) == pipe.transformer.cfg.num_layers
    want = pipe.generate(["pop"], [""], PARAMS, seeds=[1]).audio
    assert_close(per_block.generate(["pop"], [""], PARAMS, seeds=[1]).audio, want, what="per-block audio")


def test_overlong_lyrics_are_refused_before_any_model_runs(lyrics_vocab_path):
    # no models at all: the length check has to come first
    pipe = ACEStepPipeline(None, None, None, None, LazyLyricTokenizer(lyrics_vocab_path))
    long = "\n".join(["[verse]"] * 1500)  # 1 + 3 * 1500 tokens
    with pytest.raises(ValueError, match=r"lyrics\[0\] are more than 4096 tokens long \(11999 characters\); the limit is 4096"):
        pipe.generate(["pop"], [long], PARAMS)
    params = dataclasses.replace(PARAMS, task="edit")
    with pytest.raises(ValueError, match=r"target_lyrics\[1\] are more than 4096 tokens"):
        pipe.generate(["pop"], ["la"], params, batch_size=2, target_prompts=["rock"], target_lyrics=["la", long],
                      src_audio=np.zeros((2, 100), np.float32), src_sample_rate=44100)


def test_sample_cli_from_a_checkpoint_keeps_library_logs_quiet(converted, tmp_path, caplog):
    import logging

    from acestep_jax.cli.sample import main

    out = tmp_path / "song.wav"
    caplog.set_level(logging.DEBUG)
    assert main(["--checkpoint", str(converted), "--duration", "1", "--steps", "2", "--dtype", "float32",
                 "--out", str(out), "--quiet"]) == 0
    assert out.is_file()
    chatty = [r for r in caplog.records if r.name.split(".")[0] in ("absl", "orbax") and r.levelno < logging.WARNING]
    assert not chatty, f"{len(chatty)} library INFO lines, e.g. {chatty[0].getMessage()!r}"
    assert any(r.name == "acestep_jax.sample" for r in caplog.records)


def test_items_decode_at_their_own_length(pipe):
    """A mixed-duration batch decodes in one length-masked program at the batch's length,
    each item as it decodes alone: padding (whatever it holds) changes nothing."""
    from tests.helpers import assert_close

    latents = np.random.default_rng(0).normal(size=(3, 8, 16, 5)).astype(np.float32)
    audio = pipe.decode_items(latents, [5, 3, 5], 48000)
    assert audio.shape == pipe.decode(latents, 48000).shape
    for i, n in enumerate([5, 3, 5]):
        alone = pipe.decode(latents[i : i + 1, ..., :n], 48000)[0]
        assert_close(audio[i, :, : alone.shape[-1]], alone, what=f"item {i}")
        assert not audio[i, :, alone.shape[-1] :].any()
    short = pipe.decode(latents[1:2, ..., :3], 48000)[0]
    unmasked = pipe.decode(latents[1:2], 48000)[0, :, : short.shape[-1]]
    assert np.abs(unmasked - short).max() > 1e-3  # what decoding at the batch's length unmasked gives


def test_broken_config_in_a_checkpoint_is_one_line(converted, tmp_path, capsys):
    import shutil

    from acestep_jax.cli.sample import main

    ckpt = tmp_path / "ckpt"
    shutil.copytree(converted, ckpt)
    (ckpt / "transformer" / "config.json").write_text('{"num_layers": 2,')
    assert main(["--checkpoint", str(ckpt), "--duration", "1", "--steps", "2", "--out", str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "transformer/config.json is not valid JSON" in err
    assert "convert the checkpoint again" in err and not (tmp_path / "o.wav").exists()


def test_codec_dtype_loads_the_codec_in_bfloat16(pipe):
    """``codec_dtype`` (``--codec-dtype``): the checkpoint's codec restored in bfloat16, close to float32."""
    import jax
    from flax import nnx

    from acestep_jax.pipeline import load_conditioning_models

    codec = load_conditioning_models(pipe.checkpoint, codec_dtype="bfloat16")[0]
    assert {x.dtype for x in jax.tree.leaves(nnx.state(codec, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    kernel = codec.dcae.decoder.conv_in.kernel[...]
    np.testing.assert_array_equal(np.asarray(kernel),
                                  np.asarray(pipe.codec.dcae.decoder.conv_in.kernel[...].astype(jnp.bfloat16)))
    latents = np.random.default_rng(0).standard_normal((1, 8, 16, 4)).astype(np.float32)
    ref, out = pipe.codec.decode(latents), codec.decode(latents)
    assert out.dtype == np.float32
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05
