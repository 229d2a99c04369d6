"""A reference-layout checkpoint folder (as ``ACE-Step/ACE-Step-v1-3.5B``) built from the tiny golden weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import golden_root

TOKENS = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(40)] + ["rock", "pop", "piano", "guitar", "drums",
                                                                     "female", "male", "vocal", "upbeat", "sad"]


def write_tiny_tokenizer(folder: Path) -> Path:
    """A small fast tokenizer (whitespace word-level, ``</s>`` appended) with UMT5's special ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(TOKENS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 512,
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return folder


def build_reference_folder(root: Path) -> Path:
    """Write ``root`` with the four component folders, real file and key names, tiny weights."""
    g = golden_root()
    root.mkdir(parents=True, exist_ok=True)

    def component(folder, config, weights, filename="diffusion_pytorch_model.safetensors"):
        (root / folder).mkdir()
        (root / folder / "config.json").write_text(json.dumps(config, indent=2))
        shutil.copyfile(weights, root / folder / filename)

    transformer_cfg = json.loads((g / "transformer" / "config.json").read_text())
    component("ace_step_transformer", {"_class_name": "ACEStepTransformer2DModel", **transformer_cfg},
              g / "transformer" / "weights.safetensors")
    codec_cfg = json.loads((g / "music_dcae" / "config.json").read_text())
    component("music_dcae_f8c8", {"_class_name": "AutoencoderDC", **codec_cfg["dcae"]},
              g / "music_dcae" / "dcae.safetensors")
    component("music_vocoder", {"_class_name": "ADaMoSHiFiGANV1", **codec_cfg["vocoder"]},
              g / "music_dcae" / "vocoder.safetensors")
    umt5_cfg = json.loads((g / "umt5" / "config.json").read_text())
    component("umt5-base", {"architectures": ["UMT5EncoderModel"], **umt5_cfg}, g / "umt5" / "weights.safetensors",
              filename="model.safetensors")
    write_tiny_tokenizer(root / "umt5-base")
    return root
