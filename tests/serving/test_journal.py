"""The durable job journal."""

import json

from acestep_jax.serving.journal import JobStore


def test_states_round_trip_in_acceptance_order(tmp_path):
    store = JobStore(tmp_path / "state")
    for seq, job in ((2, "b"), (0, "c"), (1, "a")):
        store.save({"id": job, "seq": seq, "status": "queued"})
    assert [s["id"] for s in store.load()] == ["c", "a", "b"]
    store.save({"id": "a", "seq": 1, "status": "done"})
    store.delete("c")
    assert [(s["id"], s["status"]) for s in store.load()] == [("a", "done"), ("b", "queued")]
    assert not list((tmp_path / "state" / "jobs").glob(".tmp-*"))


def test_unreadable_states_are_moved_aside(tmp_path, caplog):
    store = JobStore(tmp_path)
    store.save({"id": "ok", "seq": 0})
    (store.jobs_dir / "bad.json").write_text("{not json")
    (store.jobs_dir / "other.json").write_text(json.dumps({"id": "someone-else"}))
    (store.jobs_dir / ".tmp-123.json").write_text("{")  # an interrupted write
    assert [s["id"] for s in store.load()] == ["ok"]
    assert sorted(p.name for p in store.jobs_dir.iterdir()) == ["bad.corrupt", "ok.json", "other.corrupt"]
    assert "bad.json" in caplog.text
