"""Text conditioning: the UMT5 prompt encoder and its tokenizer."""

from acestep_jax.text.prompt_tokenizer import PromptTokenizer
from acestep_jax.text.umt5 import UMT5Config, UMT5Encoder, umt5_erg_scales

__all__ = ["PromptTokenizer", "UMT5Config", "UMT5Encoder", "umt5_erg_scales"]
