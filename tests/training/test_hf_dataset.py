"""The reference's training data: a ``datasets`` folder as ``convert2hf_dataset.py`` writes it, preprocessed
with prompt variants (one record per song, its repeats as a weight) and trained from."""

import numpy as np
import pytest

from acestep_jax.cli.preprocess import main
from acestep_jax.training.data import choose_prompt, weighted
from acestep_jax.training.preprocess import MAX_PROMPT_CHARS, prompt_variants
from acestep_jax.training.records import PROMPT_PREFIX, PROMPT_WEIGHTS, WEIGHT, RecordSource
from tests.training.test_preprocess import _song


def test_prompt_variants_follow_the_reference_recipe():
    prompts, chances = prompt_variants(["rock", "guitar", "fast"], ["a fast rock song", ""], 4, seed=1)
    assert prompts[0] == "rock, guitar, fast" and prompts[-1] == "a fast rock song" and len(prompts) == 4
    assert all(sorted(p.split(", ")) == ["fast", "guitar", "rock"] for p in prompts[:3])
    assert len(set(prompts)) == 4 and np.isclose(sum(chances), 1.0)
    assert chances[-1] == 0.5 and np.allclose(chances[:3], 0.5 / 3)  # the tags are one choice, the caption another
    assert prompt_variants(["rock", "pop"], [], 10, seed=0)[0] == ["rock, pop", "pop, rock"]  # only 2 orders exist
    assert prompt_variants([], [], 3, seed=0) == (["music"], [1.0])
    assert prompt_variants(["x" * 300], [], 1, seed=0)[0] == ["x" * MAX_PROMPT_CHARS]
    assert prompt_variants(["a", "b", "c"], ["caption"], 1, seed=0) == (["a, b, c"], [1.0])  # one: file order


@pytest.fixture(scope="module")
def dataset_records(tmp_path_factory, lyrics_vocab_path):
    import datasets

    root = tmp_path_factory.mktemp("hf")
    songs = root / "data"
    songs.mkdir()
    _song(songs, "a", 3.0)
    _song(songs, "b", 3.5)
    rows = [
        {"keys": "a", "filename": str(songs / "a.wav"), "tags": ["rock", "guitar", "fast"], "speaker_emb_path": "",
         "norm_lyrics": "[verse]\nla la", "recaption": {"simplified": "a fast rock song", "empty": ""}},
        {"keys": "b", "filename": "data/b.wav", "tags": ["jazz"], "speaker_emb_path": "", "norm_lyrics": "",
         "recaption": {"simplified": "", "empty": ""}},
    ]
    datasets.Dataset.from_list(rows[:1] * 3 + rows[1:] * 2).save_to_disk(str(root / "zh_lora_dataset"))
    out = root / "records"
    assert main([str(root / "zh_lora_dataset"), str(out), "--tiny-random", "--lyrics-vocab", str(lyrics_vocab_path),
                 "--prompt-variants", "4"]) == 0
    return out


def test_a_datasets_folder_becomes_one_record_per_song(dataset_records):
    source = RecordSource(dataset_records)
    records = {source[i]["key"]: source[i] for i in range(len(source))}
    assert sorted(records) == ["a", "b"] and list(source.weights()) == [3, 2]
    a, b = records["a"], records["b"]
    assert int(a[WEIGHT]) == 3 and a["prompt"] == "rock, guitar, fast" and a["lyrics"] == "[verse]\nla la"
    variants = [a["text_states"]] + [a[f"{PROMPT_PREFIX}{j}"] for j in (1, 2, 3)]
    assert all(v.shape[-1] == a["text_states"].shape[-1] for v in variants)
    assert not np.allclose(variants[0][:3], variants[1][:3])  # other tag orders encode differently
    np.testing.assert_allclose(a[PROMPT_WEIGHTS], [1 / 6, 1 / 6, 1 / 6, 0.5], rtol=1e-6)
    assert not any(k.startswith(PROMPT_PREFIX) for k in b) and PROMPT_WEIGHTS not in b  # "jazz": one prompt


def test_draws_follow_the_weights(dataset_records):
    source = RecordSource(dataset_records)
    stream = weighted(source)
    assert len(stream) == 5 and sorted(stream[i]["key"] for i in range(5)) == ["a", "a", "a", "b", "b"]
    a = next(source[i] for i in range(len(source)) if source[i]["key"] == "a")
    rng = np.random.default_rng(0)
    picks = [choose_prompt(a, rng)["text_states"] for _ in range(600)]
    caption = sum(np.array_equal(p, a[f"{PROMPT_PREFIX}3"]) for p in picks)
    assert 240 < caption < 360  # about half: the recaption is one of two choices
    assert all(not any(k.startswith(PROMPT_PREFIX) for k in choose_prompt(a, rng)) for _ in range(3))


def test_training_steps_from_the_dataset(dataset_records):
    from acestep_jax.training.trainer import Trainer
    from tests.training.test_trainer import make_cfg, single_mesh, tiny_transformer

    transformer = dict(tiny_transformer(), lyric_encoder_vocab_size=6693)
    cfg = make_cfg(dataset_records.parent, model={"transformer": transformer},
                   data={"path": str(dataset_records), "batch_size": 2, "max_frames": 32})
    trainer = Trainer(cfg, mesh=single_mesh(), checkpoints=False)
    history = trainer.fit(2)
    assert len(history) == 2 and all(np.isfinite(m["loss"]) and m["loss"] > 0 for m in history)
