"""Job files: every line checked before models load, bad lines reported by number, batches,
records that reproduce their output, reruns that skip finished jobs."""

import json

import numpy as np
import pytest
import soundfile as sf

from acestep_jax import loading
from acestep_jax.cli.sample import main
from acestep_jax.serving.jobs_file import read_jobs
from acestep_jax.serving.requests import parse_request
from tests.serving.conftest import BATCH_SIZES, DURATIONS, STEPS

SHORT, LONG = DURATIONS
GOOD = [
    {"prompt": "rock, guitar", "duration": LONG, "infer_steps": STEPS, "seeds": [1, 2], "name": "rock"},
    {"prompt": "jazz piano", "audio_duration": SHORT, "infer_step": STEPS, "actual_seeds": [5], "guidance_scale": 7,
     "timecosts": {"diffusion": 1.0}, "audio_path": "elsewhere.wav", "lora_name_or_path": "none"},
    {"prompt": "pop", "duration": SHORT, "infer_steps": STEPS, "omega_scale": 3, "format": "flac",
     "lyrics": "[verse]\nhello", "seeds": [9]},
    {"prompt": "pop", "task": "retake", "duration": LONG, "infer_steps": STEPS, "seeds": [9], "retake_seeds": [3],
     "retake_variance": 0.3},
]


def _write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def _argv(jobs, out, vocab=None):
    return ["--jobs", str(jobs), "--out-dir", str(out), "--tiny-random", "--batch-sizes",
            ",".join(map(str, BATCH_SIZES)), "--compile-cache", "", "--quiet",
            *(["--lyrics-vocab", str(vocab)] if vocab else [])]


def test_lines_are_checked_and_named(tmp_path):
    jobs = _write(tmp_path / "jobs.jsonl", [
        GOOD[0], "", "{oops", {"prompt": "x", "nope": 1}, GOOD[2], GOOD[2],
        {"prompt": "x", "task": "repaint", "src_audio": str(tmp_path / "missing.wav"), "repaint_end": 1},
        {"prompt": "y", "name": "rock_1"},  # would overwrite line 1's second output
    ])
    result = read_jobs(jobs)
    assert [j.line for j in result.jobs] == [1, 5, 6]
    assert [line for line, _ in result.errors] == [3, 4, 7, 8]
    messages = dict(result.errors)
    assert messages[3].startswith("not valid JSON") and messages[4] == "nope: unknown key"
    assert "missing.wav does not exist" in messages[7] and "same files as line 1" in messages[8]
    names = [j.name for j in result.jobs]
    assert names[0] == "rock" and names[1].startswith("pop-") and names[2] == names[1] + "-2"
    assert read_jobs(jobs).jobs[1].name == names[1]  # stable across reads (and reruns)


def test_unusable_job_files_fail_before_models_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("models loaded"))
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": 1}, "[]"])
    assert main(_argv(bad, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 1: prompt: must be a string" in err and "line 2: body: must be a JSON object" in err
    assert "holds no valid job" in err
    assert main(_argv(tmp_path / "missing.jsonl", tmp_path / "out")) == 2
    assert main(["--jobs", str(bad), "--tiny-random"]) == 2
    assert "--jobs needs --out-dir" in capsys.readouterr().err
    assert main([*_argv(bad, tmp_path / "out"), "--batch-sizes", "0,2"]) == 2


def test_job_file_runs_in_batches_and_reruns_skip_finished_jobs(tmp_path, capsys, caplog, monkeypatch,
                                                                lyrics_vocab_path):
    out = tmp_path / "out"
    too_long = {"prompt": "x", "duration": SHORT, "infer_steps": STEPS, "lyrics": "la\n" * 1500}  # > 4096 tokens
    jobs = _write(tmp_path / "jobs.jsonl", [GOOD[0], GOOD[1], {"prompt": "x", "nope": 1}, "", GOOD[2], too_long,
                                            GOOD[3]])
    assert main(_argv(jobs, out, lyrics_vocab_path)) == 1
    captured = capsys.readouterr()
    assert "jobs.jsonl line 3: nope: unknown key" in captured.err
    assert "4 job(s) done, 0 skipped (finished earlier), 1 failed (lines 6)" in captured.out
    assert "line 6: lyrics:" in caplog.text and "4096" in caplog.text

    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 10 and "rock_0.wav" in files and "rock_1.json" in files
    assert sum(f.endswith(".flac") for f in files) == 1
    for job in read_jobs(jobs).jobs:
        if job.line == 6:
            continue
        for i, path in enumerate(job.paths(out)):
            record = json.loads(path.with_suffix(".json").read_text())
            assert record["output"]["line"] == job.line and record["output"]["audio_path"] == str(path)
            # a record is a job line that reproduces exactly this output (text2music draws no retake noise,
            # so the retake seeds this read of the file drew may differ)
            again, expected = parse_request(record).to_dict(), job.request.to_dict(i)
            if job.request.params.task == "text2music":
                del again["retake_seeds"], expected["retake_seeds"]
            assert again == expected
            audio, rate = sf.read(path, dtype="float32")
            seconds = job.request.params.duration
            assert rate == 48000 and audio.shape[1] == 2 and np.isfinite(audio).all()
            assert abs(audio.shape[0] / rate - seconds) < 0.1
    batches = {json.loads(p.read_text())["output"]["batch"]["size"] for p in out.glob("*.json")}
    assert batches == {4, 1}  # the text2music jobs share one batch of 4, the retake job runs alone

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("models loaded"))
    _write(jobs, [GOOD[0], GOOD[1], "", GOOD[2], GOOD[3]])
    (out / ".tmp-killed.wav").write_bytes(b"partial")  # a write interrupted by a kill
    assert main(_argv(jobs, out, lyrics_vocab_path)) == 0
    assert "0 job(s) done, 4 skipped (finished earlier), 0 failed" in capsys.readouterr().out
    assert not (out / ".tmp-killed.wav").exists()

    def loaded(*a, **k):
        raise OSError("models loaded")

    monkeypatch.setattr(loading, "load_pipeline", loaded)
    _write(jobs, [{**GOOD[0], "guidance_scale": 3.0}, GOOD[1], GOOD[2], GOOD[3]])  # line 1 edited, same name
    assert main(_argv(jobs, out, lyrics_vocab_path)) == 2  # runs it again: the models load
    assert "models loaded" in capsys.readouterr().err


def _record(job, out, i, **changes):
    path = job.paths(out)[i].with_suffix(".json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({**job.request.to_dict(i), **changes, "output": {"line": job.line}}))


def test_a_record_that_no_longer_matches_its_line_is_not_finished(tmp_path):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"prompt": "rock", "duration": SHORT, "name": "rock"},
                                            {"prompt": "jazz", "duration": SHORT, "seeds": [1, 2], "name": "jazz"}])
    rock, jazz = read_jobs(jobs).jobs
    assert rock.changed(out) is None and not rock.finished(out)
    _record(rock, out, 0)
    _record(jazz, out, 0)
    assert rock.finished(out)
    assert jazz.changed(out) is None  # the second output is missing
    _record(jazz, out, 1)
    again = read_jobs(jobs).jobs
    assert [job.finished(out) for job in again] == [True, True]  # the seeds rock's line leaves to chance differ
    _record(jazz, out, 1, guidance_scale=3.0, prompt="blues")
    assert jazz.changed(out) == ["guidance_scale", "prompt"] and not jazz.finished(out)
    jazz.paths(out)[0].with_suffix(".json").write_text("{broken")
    assert jazz.changed(out) == ["output record"]


def test_relative_paths_in_lines_are_taken_against_the_job_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    sf.write(folder / "src.wav", np.zeros((44100 * 2, 2), np.float32), 44100)
    sf.write(folder / "long.wav", np.zeros((8000 * 250, 1), np.float32), 8000)
    jobs = _write(folder / "jobs.jsonl", [
        {"prompt": "x", "task": "repaint", "src_audio": "src.wav", "repaint_start": 0.5, "repaint_end": 1.5},
        {"prompt": "x", "task": "extend", "src_audio": "long.wav", "repaint_end": 251},
        {"prompt": "x", "lora": "missing_lora"},
    ])
    monkeypatch.chdir(tmp_path)
    result = read_jobs("project/jobs.jsonl")
    assert [j.request.src_audio for j in result.jobs] == [str(jobs.parent.relative_to(tmp_path) / "src.wav")]
    messages = dict(result.errors)
    assert "src_audio: project/long.wav is 250.0 s long; source audio may be at most 240 s" in messages[2]
    assert messages[3] == "lora: project/missing_lora does not exist"
