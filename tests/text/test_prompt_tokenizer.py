"""Prompt tokenizer: the reference's padding/truncation, fixed-length padding, clear errors."""

import json

import numpy as np
import pytest

from acestep_jax.convert.umt5 import load_umt5
from acestep_jax.text import PromptTokenizer, UMT5Config
from tests.helpers import assert_close

WORDS = ["pop", "rock", "piano", "female", "vocals", "upbeat", "guitar", "drums", "slow", "sad"]


def _save_tiny_tokenizer(folder, config=None):
    """A word-level tokenizer that appends ``</s>`` like UMT5's (ids: <pad> 0, </s> 1, <unk> 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
           "unk_token": "<unk>"} if config is None else config
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


PROMPTS = ["pop rock piano", "female vocals upbeat guitar drums slow", "sad"]


def test_pads_to_longest_with_eos_and_mask(tmp_path):
    tok = PromptTokenizer.from_folder(_save_tiny_tokenizer(tmp_path / "tok"))
    ids, mask = tok(PROMPTS)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (3, 7)
    assert ids[0].tolist() == [3, 4, 5, 1, 0, 0, 0]
    assert ids[2].tolist() == [12, 1, 0, 0, 0, 0, 0]
    assert mask.sum(1).tolist() == [4, 7, 2]
    assert (ids[mask == 0] == 0).all()


def test_matches_transformers_fast_tokenizer_call(tmp_path):
    from transformers import AutoTokenizer

    folder = _save_tiny_tokenizer(tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(str(folder))
    for max_length in (256, 4):
        ours = PromptTokenizer.from_folder(folder, max_length=max_length)(PROMPTS)
        ref = hf(PROMPTS, return_tensors="np", padding=True, truncation=True, max_length=max_length)
        assert np.array_equal(ours[0], ref["input_ids"]) and np.array_equal(ours[1], ref["attention_mask"])


def test_truncation_keeps_eos(tmp_path):
    tok = PromptTokenizer.from_folder(_save_tiny_tokenizer(tmp_path / "tok"), max_length=4)
    ids, _ = tok(PROMPTS)
    assert ids.shape == (3, 4) and ids[1].tolist() == [6, 7, 8, 1]


def test_pad_to_fixed_length(tmp_path):
    tok = PromptTokenizer.from_folder(_save_tiny_tokenizer(tmp_path / "tok"))
    ids, mask = tok(PROMPTS)
    ids16, mask16 = tok(PROMPTS, pad_to=16)
    assert ids16.shape == (3, 16)
    assert np.array_equal(ids16[:, :7], ids) and np.array_equal(mask16[:, :7], mask) and not mask16[:, 7:].any()
    with pytest.raises(ValueError, match="pad_to=5"):
        tok(PROMPTS, pad_to=5)


def test_fixed_length_padding_keeps_encoder_outputs(tmp_path, golden):
    g = golden("umt5")
    model = load_umt5(g.path("weights.safetensors"), UMT5Config.from_dict(g.config))
    tok = PromptTokenizer.from_folder(_save_tiny_tokenizer(tmp_path / "tok"))
    ids, mask = tok(PROMPTS)
    ids32, mask32 = tok(PROMPTS, pad_to=32)
    out = np.asarray(model(ids, mask)) * mask[..., None]
    out32 = np.asarray(model(ids32, mask32))[:, : ids.shape[1]] * mask[..., None]
    assert_close(out32, out)


def test_pad_token_from_special_tokens_map(tmp_path):
    folder = _save_tiny_tokenizer(tmp_path / "tok", config={})
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "</s>"}}))
    ids, _ = PromptTokenizer.from_folder(folder)(PROMPTS)
    assert ids[2].tolist() == [12, 1, 1, 1, 1, 1, 1]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        PromptTokenizer.from_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "spiece.model").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json .*spiece.model"):
        PromptTokenizer.from_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable tokenizer file"):
        PromptTokenizer.from_folder(tmp_path / "bad")
    folder = _save_tiny_tokenizer(tmp_path / "tok", config={"pad_token": "[PAD]"})
    with pytest.raises(ValueError, match=r"'\[PAD\]'"):
        PromptTokenizer.from_folder(folder)
    tok = PromptTokenizer.from_folder(_save_tiny_tokenizer(tmp_path / "tok2"))
    with pytest.raises(ValueError, match="non-empty list"):
        tok("pop rock")
    with pytest.raises(ValueError, match="non-empty list"):
        tok([])
    with pytest.raises(TypeError, match=r"\[1\]"):
        tok(["pop", 3])
