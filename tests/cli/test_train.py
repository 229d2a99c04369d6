"""``train.py``: a tiny LoRA run on synthetic data and its resumed continuation; the eval hook."""

import json

import jax
import numpy as np
import pytest

from acestep_jax.cli.train import main
from acestep_jax.lora import read_lora
from acestep_jax.sharding import make_mesh
from acestep_jax.training.data import synthetic_examples
from acestep_jax.training.evaluation import sample_latents
from acestep_jax.training.trainer import Trainer
from tests.training.test_trainer import make_cfg, tiny_transformer


@pytest.mark.slow
def test_train_cli_lora_and_resume(tmp_path):
    lora = tmp_path / "lora.json"
    lora.write_text(json.dumps({"r": 2, "lora_alpha": 4, "target_modules": ["to_q", "to_k"]}))
    out = tmp_path / "run"
    common = [
        "--config", "configs/train_tiny.json", "--tiny-random", "--output-dir", str(out), "--lora", str(lora),
        "--set", f"model.transformer={json.dumps(tiny_transformer())}", "data.synthetic=8", "data.batch_size=8",
        "data.max_frames=16", "run.progress=false", "run.save_every=2", "run.log_every=1",
    ]
    assert main([*common, "optim.max_steps=2"]) == 0
    assert (out / "checkpoints" / "2").is_dir() and (out / "lora" / "step_2").is_dir()
    assert main([*common, "optim.max_steps=3"]) == 0  # resumes at step 2, runs one step
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
    adapter = read_lora(out / "lora" / "final")
    assert adapter.rank == 2 and len(adapter.pairs) == 2 * 2 * 2  # to_q, to_k of attn and cross_attn in 2 blocks
    assert list((out / "tensorboard").glob("events.*"))
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["optim"]["max_steps"] == 3 and saved["model"]["lora"] == str(lora)


def test_eval_hook_samples_latents(tmp_path):
    src = synthetic_examples(2, text_dim=48, lyric_vocab=300, frames=(12, 13), seed=2)
    cfg = make_cfg(tmp_path, data={"batch_size": 2}, run={"eval_every": 1})
    calls = []

    def hook(trainer, step):
        calls.append(step)
        return sample_latents(trainer, step, infer_steps=2)

    tr = Trainer(cfg, source=src, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]), checkpoints=False,
                 eval_fn=hook)
    tr.fit(1)
    assert calls == [1]
    latents = np.load(tmp_path / "eval" / "step_1" / "latents.npy")
    assert latents.shape == (2, 8, 16, 13) and np.isfinite(latents).all()
    meta = json.loads((tmp_path / "eval" / "step_1" / "samples.json").read_text())
    assert [m["key"] for m in meta] == ["synthetic-0", "synthetic-1"]


def test_train_cli_full_finetune_exports_transformer(tmp_path):
    from acestep_jax.cli.convert import main as convert_main
    from acestep_jax.convert.checkpoint import load_component
    from acestep_jax.convert.components import TRANSFORMER

    out = tmp_path / "run"
    assert main(["--config", "configs/train_tiny.json", "--tiny-random", "--output-dir", str(out),
                 "--set", f"model.transformer={json.dumps(tiny_transformer())}", "data.synthetic=8",
                 "data.batch_size=8", "data.max_frames=16", "run.progress=false", "optim.max_steps=1"]) == 0
    model = load_component(out / "transformer", TRANSFORMER)
    assert model.cfg.num_layers == tiny_transformer()["num_layers"]
    assert convert_main(["--to-reference", str(out / "transformer"), str(tmp_path / "torch"), "--quiet"]) == 0
    assert (tmp_path / "torch" / "ace_step_transformer" / "diffusion_pytorch_model.safetensors").is_file()
