"""The grouping key, batch sizes and batch plans (running batches: test_load.py)."""

import pytest

from acestep_jax.serving.batching import Item, batch_size_for, check_batch_sizes, group_key, plan
from acestep_jax.serving.requests import parse_request

BASE = {"prompt": "x", "duration": 20.0, "infer_steps": 10}


def _key(**kw):
    return group_key(parse_request({**BASE, **kw}, rng=None))


def test_items_differing_per_item_share_a_key():
    same = [{}, {"duration": 13.0}, {"guidance_scale": 3.0, "omega_scale": 1.0}, {"use_erg_tag": False},
            {"guidance_interval": 1.0, "guidance_interval_decay": 0.5, "min_guidance_scale": 1.0},
            {"prompt": "y", "lyrics": "la", "seeds": [5]}, {"format": "flac"}]
    assert len({_key(**kw) for kw in same}) == 1


@pytest.mark.parametrize("kw", [
    {"duration": 25.0},  # the next 128-frame bucket
    {"infer_steps": 11}, {"scheduler_type": "heun"}, {"cfg_type": "cfg"}, {"guidance_scale": 1.0},
    {"guidance_scale_text": 2.0, "guidance_scale_lyric": 2.0}, {"oss_steps": [1, 5, 9]}, {"task": "retake"},
    {"sample_rate": 44100}, {"use_zero_init": False},
])
def test_structure_bucket_and_rate_split_groups(kw):
    assert _key(**kw) != _key()


def test_batch_sizes_and_plans():
    assert check_batch_sizes([4, 1, 2, 4]) == (1, 2, 4)
    with pytest.raises(ValueError, match="divisible"):
        check_batch_sizes([1, 2, 4], data_devices=2)
    with pytest.raises(ValueError, match="positive"):
        check_batch_sizes([0, 2])
    assert [batch_size_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    a, b = parse_request(BASE), parse_request({**BASE, "infer_steps": 5})
    items = [Item(f"j{i}", 0, a if i % 3 else b) for i in range(11)]
    batches = plan(items, (1, 2, 4))
    assert [[it.job for it in batch] for batch in batches] == [
        ["j0", "j3", "j6", "j9"], ["j1", "j2", "j4", "j5"], ["j7", "j8", "j10"]]


def test_source_tasks_group_by_their_source_file():
    repaint = {"task": "repaint", "repaint_start": 1.0, "repaint_end": 3.0, "src_audio": "a.wav"}
    a = _key(**repaint)
    assert a != _key(**{**repaint, "src_audio": "b.wav"})
    assert a == _key(**{**repaint, "duration": 100.0})  # the length comes from the file
    assert a != _key(**{**repaint, "repaint_end": 4.0})  # the window is structure
