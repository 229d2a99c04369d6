"""``convert_weights.py``: every user error is one line naming the culprit, exit 2, no traceback,
nothing left on disk; stale temporary folders of killed runs are cleared; normal permissions."""

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from acestep_jax.cli.convert import main
from acestep_jax.convert import release
from tests.fake_checkpoint import build_reference_folder
from tests.helpers import REPO, golden_root, run_on_small_disk, small_disk


@pytest.fixture(scope="module")
def converted(reference_dir, tmp_path_factory, lyrics_vocab_path):
    dst = tmp_path_factory.mktemp("out") / "converted"
    release.convert_checkpoint(reference_dir, dst, names=["transformer"], lyrics_vocab=lyrics_vocab_path,
                               progress=False)
    return dst


def _broken_reference(tmp: Path, what: str) -> Path:
    ref = build_reference_folder(tmp / f"broken-{what}")
    if what == "truncated":
        f = ref / "music_vocoder" / "diffusion_pytorch_model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        (ref / "music_dcae_f8c8" / "config.json").unlink()
    return ref


def _damaged_checkpoint(tmp: Path, converted: Path) -> Path:
    ckpt = tmp / "damaged"
    shutil.copytree(converted, ckpt)
    data = max((p for p in (ckpt / "transformer" / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return ckpt


def _offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("acestep_jax.text.lyrics.vocab._download", refuse)
    monkeypatch.setattr("huggingface_hub.snapshot_download", refuse)


# each case: (name, argv from fixtures, words the one-line message must hold)
CASES = [
    ("missing source", lambda f: [f.tmp / "nowhere", f.dst], ["nowhere", "does not exist"]),
    ("existing output", lambda f: [f.ref, f.existing], ["existing", "already exists"]),
    ("overwrite a non-checkpoint", lambda f: [f.ref, f.existing, "--overwrite"],
     ["existing", "not an acestep-jax checkpoint"]),
    ("unknown component", lambda f: [f.ref, f.dst, "--components", "transformer", "bogus"], ["bogus"]),
    ("bad dtype", lambda f: [f.ref, f.dst, "--dtype", "float16"], ["--dtype", "float16"]),
    ("missing vocabulary file", lambda f: [f.ref, f.dst, "--lyrics-vocab", f.tmp / "vocab.json"], ["vocab.json"]),
    ("offline without a vocabulary", lambda f: [f.ref, f.dst],
     ["lyric vocabulary", "raw.githubusercontent.com", "--lyrics-vocab"]),
    ("offline Hub id", lambda f: ["someone/some-model", f.dst], ["someone/some-model", "Hugging Face Hub"]),
    ("incomplete reference folder", lambda f: [_broken_reference(f.tmp, "incomplete"), f.dst],
     ["music_dcae_f8c8/config.json"]),
    ("truncated safetensors", lambda f: [_broken_reference(f.tmp, "truncated"), f.dst],
     ["music_vocoder/diffusion_pytorch_model.safetensors", "truncated"]),
    ("lora without export", lambda f: [f.ref, f.dst, "--lora", f.tmp / "a.safetensors"], ["--lora"]),
    ("export from a non-folder", lambda f: ["--to-reference", f.tmp / "nothing", f.dst], ["nothing"]),
    ("export from a non-checkpoint", lambda f: ["--to-reference", f.existing, f.dst], ["existing", "params"]),
    ("export over an export", lambda f: ["--to-reference", f.ckpt, f.exported], ["ace_step_transformer", "exists"]),
    ("export with a missing LoRA", lambda f: ["--to-reference", f.ckpt, f.dst, "--lora", f.tmp / "lora.st"],
     ["lora.st"]),
    ("export of a damaged checkpoint", lambda f: ["--to-reference", _damaged_checkpoint(f.tmp, f.ckpt), f.dst],
     ["transformer", "shard-00000", "damaged", "convert the checkpoint again"]),
]


class Fixtures:
    def __init__(self, tmp: Path, ref: Path, ckpt: Path):
        self.tmp, self.ref, self.ckpt = tmp, ref, ckpt
        self.dst = tmp / "out" / "converted"
        self.existing = tmp / "existing"
        self.existing.mkdir()
        (self.existing / "notes.txt").write_text("not a checkpoint")
        self.exported = tmp / "exported"
        (self.exported / "ace_step_transformer").mkdir(parents=True)
        (self.exported / "ace_step_transformer" / "config.json").write_text("{}")


def _tree(root: Path) -> dict:
    """Sizes of everything under ``root`` but the cache folder (a download may create it)."""
    paths = (p for p in root.rglob("*") if p.relative_to(root).parts[0] != "cache")
    return {str(p.relative_to(root)): p.stat().st_size for p in paths}


@pytest.mark.parametrize("name, argv, words", CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line(name, argv, words, tmp_path, reference_dir, converted, capsys, monkeypatch):
    monkeypatch.setenv("ACESTEP_JAX_CACHE", str(tmp_path / "cache"))  # no cached vocabulary
    _offline(monkeypatch)
    f = Fixtures(tmp_path, reference_dir, converted)
    args = [str(a) for a in argv(f)]
    before = _tree(tmp_path)
    assert main([*args, "--quiet"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _tree(tmp_path) == before, "files left behind or changed"


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.splitlines()[-1].startswith("error: checkpoint folder")


def test_conversion_replaces_only_checkpoints_and_gives_normal_permissions(reference_dir, tmp_path,
                                                                           lyrics_vocab_path, capsys):
    dst = tmp_path / "ckpt"
    common = [str(reference_dir), str(dst), "--components", "vocoder", "--lyrics-vocab", str(lyrics_vocab_path),
              "--quiet"]
    old = os.umask(0o022)
    try:
        assert main(common) == 0
        first = release.read_manifest(dst)
        assert main([*common, "--overwrite"]) == 0  # a converted checkpoint may be replaced
    finally:
        os.umask(old)
    assert release.read_manifest(dst) == first
    modes = {p.stat().st_mode & 0o777 for p in [dst, *dst.rglob("*")] if p.is_dir()}
    assert modes == {0o755}, modes
    assert not (dst / release.OWNER_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left
    assert "converted" in capsys.readouterr().out


def test_a_killed_conversion_is_cleaned_up_by_the_next(reference_dir, tmp_path, lyrics_vocab_path, caplog):
    dst = tmp_path / "ckpt"
    # a conversion SIGKILLed while writing: its temporary folder stays behind
    code = ("import os, signal, sys; from pathlib import Path; from acestep_jax.convert import release; "
            "tmp = release._temporary_folder(Path(sys.argv[1])); (tmp / 'part').write_bytes(b'x' * 1000); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code, str(dst)], check=False, cwd=REPO, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    (stale,) = tmp_path.iterdir()
    assert stale.name.startswith(".ckpt.tmp-") and json.loads((stale / release.OWNER_FILE).read_text())
    # a temporary folder whose writer still runs (this process) is left alone
    busy = release._temporary_folder(dst)
    assert main([str(reference_dir), str(dst), "--components", "vocoder", "--lyrics-vocab",
                 str(lyrics_vocab_path), "--quiet"]) == 0
    assert not stale.exists() and busy.exists()
    assert f"removed {stale}" in caplog.text and f"{busy} is being written" in caplog.text
    shutil.rmtree(busy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_ssl_conversion(tmp_path, capsys):
    src = golden_root() / "ssl" / "hubert_group_postln"
    dst = tmp_path / "mhubert"
    assert main(["--ssl", "m-hubert", str(src), str(dst), "--quiet"]) == 0
    assert json.loads((dst / "config.json").read_text())["feat_extract_norm"] == "group"
    assert main(["--ssl", "mert", str(src), str(dst), "--quiet"]) == 2
    assert main(["--ssl", "mert", str(tmp_path / "nowhere"), str(tmp_path / "x"), "--quiet"]) == 2
    assert main(["--ssl", "mert", str(src), str(tmp_path / "y"), "--components", "dcae"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "already exists" in err[0]
    assert err[1].startswith("error: ") and "nowhere" in err[1]
    assert err[2] == "error: --components does not go with --ssl" and not (tmp_path / "y").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(reference_dir, tmp_path, lyrics_vocab_path, capsys, monkeypatch):
    from acestep_jax import files
    from acestep_jax.convert import checkpoint

    argv = [str(reference_dir), str(tmp_path / "ckpt"), "--lyrics-vocab", str(lyrics_vocab_path), "--quiet"]
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    assert main(argv) == 2  # found before writing
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on device for the converted checkpoint in {tmp_path / 'ckpt'}: "
                          "it needs about ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def full(*args):  # how orbax / tensorstore report ENOSPC met halfway
        raise ValueError("RESOURCE_EXHAUSTED: Error writing \"x\": No space left on device [os_error_code='28']")

    monkeypatch.setattr(checkpoint, "_save_params", full)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device; free some space") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_convert_ssl_checks_the_free_space_first(tmp_path, capsys, monkeypatch):
    from acestep_jax import files

    src = golden_root() / "ssl" / "hubert_group_postln"
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    assert main(["--ssl", "m-hubert", str(src), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device for the converted m-hubert in ") and err.count("\n") == 1, err
    assert "free some space" in err and list(tmp_path.iterdir()) == []


@small_disk
def test_a_disk_that_fills_during_the_write_is_one_line(reference_dir, tmp_path, lyrics_vocab_path):
    """A real full disk met halfway through orbax's writes (the free-space check is passed by a disk
    that fills later): one line, exit 2, no writer-thread tracebacks, nothing left on the disk."""
    skip_check = "from acestep_jax.convert import checkpoint, release\n" \
                 "checkpoint.check_free_space = release.check_free_space = lambda *a: None\n"
    argv = [str(reference_dir), str(tmp_path / "disk" / "ckpt"), "--lyrics-vocab", str(lyrics_vocab_path), "--quiet"]
    proc, left = run_on_small_disk(tmp_path / "disk", "4m", skip_check, "acestep_jax.cli.convert", argv)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == ("error: no space left on device; free some space or write elsewhere "
                           "(nothing partial was kept)\n"), proc.stderr[-3000:]
    assert left == []
