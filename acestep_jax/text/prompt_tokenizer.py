"""The UMT5 prompt tokenizer (the checkpoint's ``umt5-base/tokenizer.json``).

Behaves as the reference's fast tokenizer call ``tok(prompts, padding=True,
truncation=True, max_length=256)``: special tokens added (UMT5 appends ``</s>``),
each prompt truncated to ``max_length`` tokens, the batch right-padded with the pad
id to its longest prompt. ``pad_to`` pads further to a fixed length so a jitted
encoder sees a static shape; the extra positions have mask 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _token_content(token) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token


def _configured_pad_token(folder: Path) -> str | None:
    for name in _CONFIG_FILES:
        path = folder / name
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                pad = _token_content(json.load(f).get("pad_token"))
            if pad is not None:
                return pad
    return None


class PromptTokenizer:
    """Text prompts → ``(input_ids, attention_mask)``, both ``np.int32 [B, L]``."""

    def __init__(self, tokenizer, pad_id: int, max_length: int = 256):
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)  # keeps room for the special tokens
        self.tokenizer, self.pad_id, self.max_length = tokenizer, int(pad_id), max_length

    @classmethod
    def from_folder(cls, path: str | os.PathLike, max_length: int = 256) -> PromptTokenizer:
        """Load ``tokenizer.json`` from ``path``; the pad token comes from ``tokenizer_config.json``
        (or ``special_tokens_map.json``), else ``<pad>``."""
        from tokenizers import Tokenizer

        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"prompt tokenizer folder not found: {folder}")
        file = folder / TOKENIZER_FILE
        if not file.is_file():
            present = sorted(p.name for p in folder.iterdir())
            raise FileNotFoundError(
                f"no {TOKENIZER_FILE} in {folder} (found: {present or 'nothing'}); the prompt tokenizer "
                f"needs the fast tokenizer file of the checkpoint's umt5-base folder"
            )
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad files
            raise ValueError(f"{file} is not a readable tokenizer file: {e}") from None
        pad = _configured_pad_token(folder) or "<pad>"
        pad_id = tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"pad token {pad!r} of {folder} is not in the vocabulary of {file}")
        return cls(tokenizer, pad_id, max_length)

    def __call__(self, prompts: Sequence[str], pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize ``prompts`` and right-pad to the longest (or to ``pad_to``, which must fit it)."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad:
            raise TypeError(f"prompts must be strings; items {bad} are not")
        encodings = self.tokenizer.encode_batch(list(prompts))
        longest = max(len(e.ids) for e in encodings)
        length = longest if pad_to is None else int(pad_to)
        if length < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest tokenized prompt ({longest} tokens)")
        ids = np.full((len(encodings), length), self.pad_id, np.int32)
        mask = np.zeros((len(encodings), length), np.int32)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask
