"""``sample.py`` user errors: one line naming the culprit, exit code 2, no traceback, nothing on disk.

Every case fails before any model loads (the checks run first), so the table is fast.
"""

import json
import urllib.error

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from acestep_jax.cli.sample import main, parse_args, validate
from acestep_jax.errors import UsageError


def _setup(tmp_path):
    """Files the cases refer to, made inside ``tmp_path`` (the working folder)."""
    (tmp_path / "latin1.txt").write_bytes("[verse]\ncafé au lait\n".encode("latin-1"))
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "taken.wav").mkdir()
    (tmp_path / "long.txt").write_text("[verse]\n" + "la la la la la\n" * 1400, encoding="utf-8")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "broken.json").write_text('{"duration": 10,\n "infer_steps": }')
    (tmp_path / "bad_types.json").write_text(json.dumps({"duration": 10, "guidance_scale": [1, 2]}))
    (tmp_path / "bad_task.json").write_text(json.dumps({"task": 5}))
    sf.write(tmp_path / "src.wav", np.zeros((44100 * 2, 2), np.float32), 44100)
    sf.write(tmp_path / "long.wav", np.zeros((8000 * 300, 1), np.float32), 8000)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    a = np.ones((2, 4), np.float32)
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": a,
               "transformer_blocks.0.attn.to_q.lora_B.weight": np.full((4, 2), np.nan, np.float32)},
              str(tmp_path / "nan.safetensors"))


CASES = [
    # (arguments after --tiny-random, text the one-line message must contain)
    (["--duration", "100000"], "--duration: must be in (0, 240] seconds"),
    (["--duration", "inf"], "--duration: must be a finite number"),
    (["--duration", "nan"], "--duration: must be a finite number"),
    (["--steps", "100000"], "--steps: must be in [1, 1000], got 100000"),
    (["--guidance-scale", "nan"], "--guidance-scale: must be a finite number"),
    (["--out", "taken.wav"], "--out taken.wav is an existing folder"),
    (["--out", "a_file/song.wav"], "a_file is a file, not a folder"),
    (["--lyrics-file", "latin1.txt"], "--lyrics-file latin1.txt is not UTF-8 text"),
    (["--lyrics-file", "missing.txt"], "--lyrics-file missing.txt does not exist"),
    (["--lyrics-file", "long.txt", "--lyrics-vocab", "VOCAB"], "the limit is 4096 tokens"),
    (["--lyrics", "[verse]\nhello"], "could not be downloaded from https://"),
    (["--lyrics-vocab", "missing.json"], "--lyrics-vocab missing.json does not exist"),
    (["--lyrics-vocab", "broken.json"], "lyric vocabulary broken.json is not a tokenizer vocabulary"),
    (["--lyrics", "la", "--lyrics-vocab", "list.json"], "lyric vocabulary list.json is not a tokenizer vocabulary"),
    (["--lyrics-vocab", "a_folder"], "--lyrics-vocab a_folder is a folder; give its vocab.json"),
    (["--params-json", "list.json"], "must hold a JSON object"),
    (["--params-json", "broken.json"], "broken.json is not valid JSON (Expecting value at line 2"),
    (["--params-json", "bad_types.json"], "bad_types.json: guidance_scale: must be a finite number, got an array"),
    (["--params-json", "bad_task.json"], "bad_task.json: task: must be a string, got an integer (5)"),
    (["--params-json", "missing.json"], "--params-json missing.json does not exist"),
    (["--batch", "3", "--shard"], "--batch 3 is not divisible by the 8 devices of --shard"),
    (["--batch", "0"], "--batch: must be in [1, inf], got 0"),
    (["--batch", "300"], "--batch: asks for 300 outputs; at most 256 per request"),
    (["--seeds", "-1"], "--seeds[0]: must be in [0, 4294967295], got -1"),
    (["--sample-rate", "7"], "--sample-rate: must be in [8000, 192000], got 7"),
    (["--lora-weight", "0.5"], "--lora-weight / --lora-scale given without --lora"),
    (["--task", "repaint", "--src-audio", "src.wav", "--repaint-start", "1", "--repaint-end", "9"],
     "outside the source audio"),
    (["--task", "extend", "--src-audio", "missing.wav"], "--src-audio: missing.wav does not exist"),
    (["--transformer", "a_folder"], "--transformer needs --checkpoint"),
    (["--task", "extend", "--src-audio", "long.wav"], "--src-audio: long.wav is 300.0 s long; source audio may be at most 240 s"),
    (["--task", "audio2audio", "--src-audio", "long.wav"], "long.wav is 300.0 s long"),
    (["--lora", "junk.safetensors"], "--lora: junk.safetensors is not a readable safetensors file"),
    (["--lora", "nan.safetensors"], "tensors hold NaN or Inf values: ['transformer_blocks.0.attn.to_q.lora_B.weight']"),
    (["--lora", "a_folder"], "--lora: LoRA file not found: a_folder/pytorch_lora_weights.safetensors"),
    (["--out", "song.aiff"], "output format 'aiff'"),
]


@pytest.fixture
def no_download(monkeypatch, tmp_path_factory):
    """No network and an empty cache: the lyric vocabulary can only come from --lyrics-vocab."""
    from acestep_jax.text.lyrics import vocab

    def offline(url, dest):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(vocab, "_download", offline)
    monkeypatch.setenv("ACESTEP_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_user_errors_are_one_line(argv, message, tmp_path, monkeypatch, capsys, no_download, lyrics_vocab_path):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path)
    argv = [str(lyrics_vocab_path) if a == "VOCAB" else a for a in argv]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["--tiny-random", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--tiny-random", "--duration", "inf", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("--duration: must be a finite number, got inf")


def test_a_request_without_retake_seeds_reloads(tmp_path):
    record = tmp_path / "request.json"
    record.write_text(json.dumps({"duration": 5.0, "seeds": [1, 2], "prompt": "rock"}))
    args = parse_args(["--tiny-random", "--params-json", str(record)])
    assert (args.seeds, args.batch_size, args.prompt) == ([1, 2], 2, "rock") and len(args.retake_seeds) == 2


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "(default: True)" not in out and "(default: False)" not in out and "(default: )" not in out
    for block in out.split("\n  -")[1:]:
        assert block.count("default") <= 1, block


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
RECORD_KEYS = ["task", "duration", "infer_steps", "guidance_scale", "omega_scale", "scheduler_type", "cfg_type",
               "guidance_interval", "oss_steps", "use_erg_tag", "retake_variance", "repaint_start", "repaint_end",
               "n_avg", "seeds", "retake_seeds", "batch_size", "bucket", "batch_invariant", "prompt", "lyrics",
               "format", "sample_rate", "src_audio", "lora", "lora_weight", "output", "audio_duration",
               "unknown_key"]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(RECORD_KEYS), JSON_VALUES, max_size=6) | JSON_VALUES)
def test_params_json_fuzz(tmp_path, lyrics_vocab_path, record):
    """Any JSON in --params-json either loads into valid parameters or raises UsageError."""
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    try:
        args = parse_args(["--tiny-random", "--params-json", str(path), "--out", str(tmp_path / "o.wav"),
                           "--lyrics-vocab", str(lyrics_vocab_path)])
        if args.task not in ("repaint", "extend", "edit", "audio2audio"):  # those need real source files
            validate(args)
    except UsageError:
        pass


def test_ctrl_c_while_generating_stops_at_once_with_one_line(tmp_path, lyrics_vocab_path):
    """SIGINT mid-generation: exit 130 within seconds, one line, no traceback, no output files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    # Ctrl-C handling as from a terminal, even when pytest runs in the background (SIGINT ignored)
    as_from_a_terminal = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                          "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.Popen(
        [sys.executable, "-c", as_from_a_terminal, str(REPO / "sample.py"), "--tiny-random", "--duration", "240",
         "--steps", "1000", "--lyrics-vocab", str(lyrics_vocab_path), "--compile-cache", "", "--quiet",
         "--out", str(tmp_path / "x.wav")],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait until the models are loaded and the generation has started
        lines.append(line)
        if "generating" in line:
            break
    time.sleep(2.0)
    assert proc.poll() is None, "".join(lines)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        _, rest = proc.communicate(timeout=30)
    finally:
        proc.kill()  # nothing once it has exited; never left running if it ignored the signal
    assert proc.returncode == 130
    assert time.monotonic() - start < 5.0
    assert rest.strip().splitlines() == ["interrupted (Ctrl-C) while generating; nothing more was written"], rest
    assert list(tmp_path.iterdir()) == []
