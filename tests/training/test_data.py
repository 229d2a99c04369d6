"""Training records and the grain pipeline: round trip, bucketing, sharding, resumable order."""

import grain
import numpy as np
import pytest

from acestep_jax.training.config import DataSection, TrainConfig
from acestep_jax.training.data import (
    collate,
    crop_example,
    make_dataset,
    pad_length,
    synthetic_examples,
)
from acestep_jax.training.records import RecordSource, decode_example, encode_example, write_records


def _examples(n=6, **kw):
    return synthetic_examples(n, text_dim=48, ssl_dims={"mert": 40}, **kw)


def test_record_round_trip(tmp_path):
    exs = _examples(5)
    path = tmp_path / "train.array_record"
    assert write_records(path, exs) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    src = RecordSource(tmp_path)
    assert len(src) == 5
    for i in (0, 4):
        got = src[i]
        assert set(got) == set(exs[i])
        for k, v in exs[i].items():
            if isinstance(v, str):
                assert got[k] == v
            else:
                np.testing.assert_array_equal(got[k], v)
                assert got[k].dtype == v.dtype


def test_record_errors_name_the_field(tmp_path):
    bad = dict(_examples(1)[0])
    del bad["speaker"]
    with pytest.raises(ValueError, match="speaker"):
        encode_example(bad)
    bad = dict(_examples(1)[0], latents=np.zeros((8, 4, 3), np.float32))
    with pytest.raises(ValueError, match="latents"):
        write_records(tmp_path / "x.array_record", [bad])
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(FileNotFoundError):
        RecordSource(tmp_path / "missing")
    assert decode_example(encode_example(_examples(1)[0]))["key"] == "synthetic-0"


def test_pad_crop_collate():
    assert pad_length(5, (8, 16), 4) == 8 and pad_length(17, (8, 16), 4) == 20 and pad_length(5, (), 4) == 8
    ex = _examples(1, frames=(40, 40))[0]
    cropped = crop_example(ex, np.random.default_rng(0), 16)
    assert cropped["latents"].shape[-1] == 16
    start = next(s for s in range(25) if np.array_equal(cropped["latents"], ex["latents"][..., s : s + 16]))
    # SSL frames covering the same span: 2.5 per latent frame, rounded outwards
    lo, hi = int(np.floor(start * 2.5)), int(np.ceil((start + 16) * 2.5))
    np.testing.assert_array_equal(cropped["ssl/mert"], ex["ssl/mert"][lo:hi])

    exs = _examples(3, frames=(5, 11))
    cfg = DataSection(frame_buckets=(8, 12), pad_multiple=4, max_frames=12)
    b = collate(exs, cfg, ssl_names=("mert", "m-hubert"))
    lens = [e["latents"].shape[-1] for e in exs]
    assert b["latents"].shape == (3, 8, 16, 8 if max(lens) <= 8 else 12)
    np.testing.assert_array_equal(b["frame_mask"].sum(1), lens)
    np.testing.assert_array_equal(b["text_mask"].sum(1), [len(e["text_states"]) for e in exs])
    np.testing.assert_array_equal(b["lyric_mask"].sum(1), [len(e["lyric_ids"]) for e in exs])
    np.testing.assert_array_equal(b["ssl_len/mert"], [len(e["ssl/mert"]) for e in exs])
    assert "ssl/m-hubert" not in b
    for i, e in enumerate(exs):
        np.testing.assert_array_equal(b["latents"][i, ..., : lens[i]], e["latents"])
        assert not b["latents"][i, ..., lens[i] :].any()


def _keys(batch_iter, n):
    return [tuple(np.round(b["latents"][:, 0, 0, 0], 5)) for b in (next(batch_iter) for _ in range(n))]


def test_iteration_is_deterministic_and_resumable():
    exs = _examples(7, frames=(8, 8))
    cfg = DataSection(max_frames=8, seed=3, num_threads=1, prefetch=2)
    one = grain.sharding.ShardOptions(0, 1)
    full = _keys(iter(make_dataset(exs, cfg, batch_size=2, shard=one)), 8)  # crosses epochs
    again = _keys(iter(make_dataset(exs, cfg, batch_size=2, shard=one)), 8)
    assert full == again
    it = iter(make_dataset(exs, cfg, batch_size=2, shard=one))
    _keys(it, 3)
    state = it.get_state()
    resumed = iter(make_dataset(exs, cfg, batch_size=2, shard=one))
    resumed.set_state(state)
    assert _keys(resumed, 5) == full[3:]


def test_per_host_shards_are_disjoint():
    exs = _examples(8, frames=(8, 8))
    cfg = DataSection(max_frames=8, num_threads=0)
    seen = []
    for host in range(2):
        it = iter(make_dataset(exs, cfg, batch_size=4, shard=grain.sharding.ShardOptions(host, 2)))
        seen.append({float(x) for x in next(it)["latents"][:, 0, 0, 0]})
    assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]


def test_config_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  learning_rate: 0.001\ndata:\n  frame_buckets: [8, 16]\n")
    cfg = TrainConfig.load(p, ["optim.grad_accum=2", "run.eval_fn=pkg.mod:fn"])
    assert cfg.optim.learning_rate == 1e-3 and cfg.optim.grad_accum == 2 and cfg.data.frame_buckets == (8, 16)
    assert cfg.run.eval_fn == "pkg.mod:fn" and cfg.optim.b1 == 0.8
    with pytest.raises(ValueError, match="learning_rat"):
        TrainConfig.from_dict({"optim": {"learning_rat": 1}})
