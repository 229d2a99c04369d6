"""Hub ids, downloads with one-line failures, and the cache of conversions."""

import pytest

from acestep_jax.convert import hub


def test_repo_ids(tmp_path, monkeypatch):
    assert hub.looks_like_repo_id("ACE-Step/ACE-Step-v1-3.5B") and hub.looks_like_repo_id("m-a-p/MERT-v1-330M")
    for spec in ("no-slash", "a/b/c", "/abs/path", "-x/y", "a/ b"):
        assert not hub.looks_like_repo_id(spec)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert not hub.looks_like_repo_id("owner/name")  # an existing folder is a path


def test_failed_downloads_are_one_line(monkeypatch):
    import huggingface_hub

    def offline(*_, **__):
        raise OSError("Temporary failure in name resolution\ntraceback details")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(hub.DownloadError) as e:
        hub.snapshot("owner/name", ["*.json"], "thing")
    assert str(e.value) == ("could not download the thing owner/name from the Hugging Face Hub (OSError: Temporary "
                            "failure in name resolution); pass a local folder instead")


def test_a_conversion_is_made_once_per_stamp(tmp_path, monkeypatch):
    monkeypatch.setenv("ACESTEP_JAX_CACHE", str(tmp_path / "cache"))
    made = []

    def convert(out):
        made.append(out)
        out.mkdir(parents=True)
        (out / "done").write_text("")

    def done(folder):
        return (folder / "done").is_file()

    first = hub.cached_conversion("m", tmp_path, "stamp-1", done, convert)
    assert hub.cached_conversion("m", tmp_path, "stamp-1", done, convert) == first and len(made) == 1
    assert hub.cached_conversion("m", tmp_path, "stamp-2", done, convert) != first and len(made) == 2
    assert first.parent == tmp_path / "cache" / "converted" and first.name.startswith("m-")
    (tmp_path / "a.bin").write_bytes(b"12")
    assert hub.files_stamp([tmp_path / "a.bin"], tmp_path).startswith("a.bin:2:")
