"""Preprocessing a song folder into records: codec, prompt, lyrics and the REPA targets; resuming; bad input."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from acestep_jax.cli.preprocess import main
from acestep_jax.training import preprocess
from acestep_jax.training.preprocess import (
    MANIFEST,
    Preprocessor,
    discover,
    load_song,
    prepare_audio,
    preprocess_folder,
)
from acestep_jax.training.records import RecordSource
from acestep_jax.training.ssl_features import MERT_RECIPE, MHUBERT_RECIPE, SSLFeatureExtractor
from tests.helpers import golden_root
from tests.models.test_ssl import golden_hubert

GOLDEN_MERT, GOLDEN_MHUBERT = "hubert_layer_preln", "hubert_group_postln"


def _song(folder, name, seconds, prompt=None, lyrics=None, sr=44100, silent=False):
    t = np.arange(int(sr * seconds)) / sr
    wave = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(3 * t))
    sf.write(folder / f"{name}.wav", np.stack([wave, 0.8 * wave], 1), sr)
    if prompt is not None:
        (folder / f"{name}_prompt.txt").write_text(prompt)
    if lyrics is not None:
        (folder / f"{name}_lyrics.txt").write_text(lyrics)


def _undecodable(folder, name):
    (folder / f"{name}.mp3").write_bytes(b"this is not audio" * 64)
    (folder / f"{name}_prompt.txt").write_text("noise")


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_prepare_audio():
    sr = 1000
    a = prepare_audio(np.full((2, 500), 2.0), sr)
    assert a.shape == (2, 3000) and a.max() == 1.0  # clipped, padded to 3 s
    assert prepare_audio(np.zeros((2, 5000)), sr) is None
    assert prepare_audio(np.ones((2, 300 * sr)), sr).shape == (2, 240 * sr)
    late = np.zeros((2, 300 * sr))
    late[:, 250 * sr :] = 0.5  # silent for its first 240 s, but not 95 % silent before the cut
    assert prepare_audio(late, sr).shape == (2, 240 * sr)


def test_preprocess_folder_tiny(tmp_path, lyrics_vocab_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    _song(songs, "a", 4.0, "pop, piano", "[verse]\nhello world")
    _song(songs, "b", 1.0, "rock")  # no lyrics, shorter than 3 s
    _song(songs, "c", 2.0)  # no prompt: skipped
    _song(songs, "d", 4.0, "ambient", silent=True)  # silent: skipped
    np.save(songs / "a_mert.npy", np.ones((120, 40), np.float32))
    assert [i.key for i in discover(songs)] == ["a", "b", "d"]
    pre = Preprocessor.tiny_random(lyrics_vocab=str(lyrics_vocab_path))
    summary = preprocess_folder(songs, tmp_path / "rec", pre, shard_size=1)
    assert len(summary.files) == 2 and summary.written == ["a", "b"] and summary.silent == ["d.wav"]
    src = RecordSource(tmp_path / "rec")
    a, b = src[0], src[1]
    assert (a["key"], b["key"]) == ("a", "b")
    assert a["latents"].shape[:2] == (8, 16) and a["latents"].shape[2] == 43  # 4 s at 44.1 kHz / 4096
    assert b["latents"].shape[2] == 32  # padded to 3 s
    assert a["text_states"].shape[1] == 48 and len(a["text_states"]) > len(b["text_states"])
    assert a["lyric_ids"][0] == 261 and len(a["lyric_ids"]) > 3
    np.testing.assert_array_equal(b["lyric_ids"], [0])
    assert a["ssl/mert"].shape == (120, 40) and "ssl/mert" not in b
    assert not a["speaker"].any()
    manifest = json.loads((tmp_path / "rec" / MANIFEST).read_text())
    assert manifest["parts"] == {"part-00000.array_record": ["a"], "part-00001.array_record": ["b"]}
    assert manifest["silent"] == ["d"]
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "nothing")


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory, lyrics_vocab_path):
    """A folder with two songs, an undecodable file and a silent one, preprocessed by the command line
    with the golden encoders as MERT and mHuBERT: a first run interrupted after one song, then a rerun."""
    root = tmp_path_factory.mktemp("ssl_run")
    songs = root / "songs"
    songs.mkdir()
    _song(songs, "a", 5.5, "rock, guitar", "[verse]\nhello world", sr=48000)  # two MERT chunks
    _undecodable(songs, "b_broken")
    _song(songs, "c", 3.5, "ambient")
    _song(songs, "d", 4.0, "quiet", silent=True)
    rec = root / "rec"
    args = [str(songs), str(rec), "--tiny-random", "--lyrics-vocab", str(lyrics_vocab_path),
            "--mert", str(golden_root() / "ssl" / GOLDEN_MERT), "--mhubert", str(golden_root() / "ssl" / GOLDEN_MHUBERT),
            "--shard-size", "1", "--songs-per-batch", "2", "--ssl-chunk-batch", "4"]
    calls = []
    original = Preprocessor.latents

    def interrupt_after_one(self, audio):
        calls.append(audio.shape)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, audio)

    mp = pytest.MonkeyPatch()
    mp.setenv("ACESTEP_JAX_CACHE", str(root / "cache"))
    mp.setattr(Preprocessor, "latents", interrupt_after_one)
    assert main(args) == 130
    first = json.loads((rec / MANIFEST).read_text())
    mp.setattr(Preprocessor, "latents", original)
    rc = main(args)
    mp.undo()
    return {"songs": songs, "rec": rec, "args": args, "first": first, "rc": rc}


def test_preprocess_computes_ssl_features_and_resumes(ssl_run, monkeypatch, capsys, caplog):
    assert ssl_run["first"]["parts"] == {"part-00000.array_record": ["a"]}  # the interrupted run kept song a
    assert ssl_run["rc"] == 0
    manifest = json.loads((ssl_run["rec"] / MANIFEST).read_text())
    assert manifest["parts"] == {"part-00000.array_record": ["a"], "part-00001.array_record": ["c"]}
    assert manifest["silent"] == ["d"]
    assert set(manifest["settings"]["ssl_models"]) == {"mert", "m-hubert"}
    assert not [p for p in ssl_run["rec"].iterdir() if p.name.startswith(".tmp-")]
    src = RecordSource(ssl_run["rec"])
    assert [src[i]["key"] for i in range(len(src))] == ["a", "c"]
    for name, recipe, golden_name in (("mert", MERT_RECIPE, GOLDEN_MERT), ("m-hubert", MHUBERT_RECIPE, GOLDEN_MHUBERT)):
        extractor = SSLFeatureExtractor(golden_hubert(golden_name), recipe)
        for i, key in enumerate(["a", "c"]):
            song = load_song(next(it for it in discover(ssl_run["songs"]) if it.key == key))
            expected = extractor.songs([song.audio])[0]
            np.testing.assert_allclose(src[i][f"ssl/{name}"], expected, rtol=1e-5, atol=1e-5, err_msg=f"{key} {name}")
            chunks = -(-recipe.valid_samples(song.audio.shape[-1]) // recipe.chunk_samples)
            assert len(expected) == (recipe.valid_samples(song.audio.shape[-1]) + 319) // 320 - (chunks - 1)
    # a third run has nothing left but the undecodable song, which is reported again
    monkeypatch.setenv("ACESTEP_JAX_CACHE", str(ssl_run["rec"].parent / "cache"))
    capsys.readouterr()
    assert main(ssl_run["args"]) == 0
    assert "skipped 1 unreadable: b_broken.mp3" in capsys.readouterr().out
    assert any("b_broken.mp3" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert json.loads((ssl_run["rec"] / MANIFEST).read_text())["parts"] == manifest["parts"]


def test_training_steps_with_repa_from_the_records(ssl_run):
    from acestep_jax.training.trainer import Trainer
    from tests.training.test_trainer import make_cfg, single_mesh, tiny_transformer

    # the projectors must give the encoders' widths, read from the SSL golden set (not the transformer's)
    widths = [json.loads((golden_root() / "ssl" / name / "config.json").read_text())["hidden_size"]
              for name in (GOLDEN_MERT, GOLDEN_MHUBERT)]
    transformer = dict(tiny_transformer(), ssl_latent_dims=widths, lyric_encoder_vocab_size=6693)
    cfg = make_cfg(ssl_run["rec"].parent, model={"transformer": transformer},
                   data={"path": str(ssl_run["rec"]), "batch_size": 2, "max_frames": 32})
    trainer = Trainer(cfg, mesh=single_mesh(), checkpoints=False)
    batch = next(trainer.data_iter)
    assert batch["ssl/mert"].shape[-1] == widths[0] and batch["ssl/m-hubert"].shape[-1] == widths[1]
    assert batch["ssl_len/m-hubert"].min() > 0
    history = trainer.fit(2)
    assert len(history) == 2
    for m in history:
        assert all(np.isfinite(m[k]) and m[k] > 0 for k in ("loss", "mert_loss", "m-hubert_loss"))


def _bad_cases(tmp_path):
    """name → (arguments, the culprit the message must name)."""
    songs = tmp_path / "songs"
    songs.mkdir()
    _song(songs, "a", 3.0, "pop")
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "old.array_record").write_bytes(b"")
    other = tmp_path / "other"
    other.mkdir()
    settings = {"checkpoint": "x", "ssl_models": {}, "repeat": 1}
    (other / MANIFEST).write_text(json.dumps({"format": "acestep-jax-records", "version": 1, "parts": {},
                                              "silent": [], "settings": settings}))
    twins = tmp_path / "twins"
    twins.mkdir()
    _song(twins, "song", 3.0, "pop")
    (twins / "song.mp3").write_bytes((twins / "song.wav").read_bytes())
    not_ckpt = tmp_path / "not_a_checkpoint"
    not_ckpt.mkdir()
    out = str(tmp_path / "out")
    base = [str(songs), out, "--tiny-random"]
    return {
        "missing input": ([str(tmp_path / "missing"), out, "--tiny-random"], "missing"),
        "input is a file": ([str(a_file), out, "--tiny-random"], "file.txt"),
        "no songs": ([str(empty), out, "--tiny-random"], "empty"),
        "same stem": ([str(twins), out, "--tiny-random"], "song.mp3 and song.wav would share one _prompt.txt"),
        "output is a file": ([str(songs), str(a_file), "--tiny-random"], "file.txt"),
        "foreign records": ([str(songs), str(foreign), "--tiny-random"], "foreign"),
        "other settings": ([str(songs), str(other), "--tiny-random"], "other settings"),
        "missing checkpoint": ([str(songs), out, "--checkpoint", str(tmp_path / "ckpt")], "ckpt"),
        "not a checkpoint": ([str(songs), out, "--checkpoint", str(not_ckpt)], "not_a_checkpoint"),
        "missing mert": ([*base, "--mert", str(tmp_path / "no_mert")], "--mert"),
        "mhubert not a model": ([*base, "--mhubert", str(empty)], "--mhubert"),
        "missing vocabulary": ([*base, "--lyrics-vocab", str(tmp_path / "vocab.json")], "vocab.json"),
        "shard size": ([*base, "--shard-size", "0"], "--shard-size"),
        "repeat": ([*base, "--repeat", "-1"], "--repeat"),
        "chunk batch": ([*base, "--ssl-chunk-batch", "0"], "--ssl-chunk-batch"),
        "unknown flag": ([*base, "--no-such-flag"], "--no-such-flag"),
        "no model": ([str(songs), out], "--checkpoint"),
    }


BAD_CASES = ["missing input", "input is a file", "no songs", "same stem", "output is a file", "foreign records",
             "other settings", "missing checkpoint", "not a checkpoint", "missing mert", "mhubert not a model",
             "missing vocabulary", "shard size", "repeat", "chunk batch", "unknown flag", "no model"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_command_lines_fail_cleanly(case, tmp_path, monkeypatch, capsys):
    for name in ("tiny_random", "from_checkpoint"):
        monkeypatch.setattr(Preprocessor, name, lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr("acestep_jax.training.ssl_features.load_extractor",
                        lambda *a, **k: pytest.fail("an SSL model was loaded"))
    cases = _bad_cases(tmp_path)
    assert sorted(cases) == sorted(BAD_CASES)
    argv, culprit = cases[case]
    before = _files(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], err
    assert "Traceback" not in err
    assert _files(tmp_path) == before


def test_a_folder_of_only_bad_songs_writes_nothing(tmp_path, capsys):
    songs = tmp_path / "songs"
    songs.mkdir()
    _undecodable(songs, "broken")
    _song(songs, "quiet", 3.0, "ambient", silent=True)
    assert main([str(songs), str(tmp_path / "rec"), "--tiny-random"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: no records written") and str(songs) in lines[-1]
    assert not (tmp_path / "rec").exists()


def test_preprocess_from_converted_checkpoint(tmp_path, lyrics_vocab_path, caplog, golden):
    """The real path: the codec, prompt encoder and tokenizers of a converted checkpoint."""
    from acestep_jax.convert.release import convert_checkpoint
    from tests.fake_checkpoint import build_reference_folder

    ckpt = tmp_path / "ckpt"
    convert_checkpoint(build_reference_folder(tmp_path / "hf"), ckpt, lyrics_vocab=lyrics_vocab_path,
                       names=["dcae", "vocoder", "text_encoder"], progress=False)
    songs = tmp_path / "songs"
    songs.mkdir()
    _song(songs, "a", 3.0, "rock guitar", "[verse]\nhello world")
    caplog.set_level(logging.INFO)  # the libraries' INFO lines (orbax's "absl" ones) would show
    assert main([str(songs), str(tmp_path / "rec"), "--checkpoint", str(ckpt)]) == 0
    a = RecordSource(tmp_path / "rec")[0]
    width = golden("umt5").config["d_model"]  # the fake checkpoint's text encoder is the golden one
    assert a["latents"].shape == (8, 16, 32)
    assert a["text_states"].shape == (3, width)  # rock guitar </s>
    assert a["lyric_ids"][0] == 261
    noisy = [r for r in caplog.records if r.levelno < logging.WARNING and not r.name.startswith("acestep_jax")]
    assert not noisy, [(r.name, r.getMessage()) for r in noisy[:3]]
    assert preprocess.INPUT_RATE == 48000
