"""The sharded train step: sharded == single device, loss goes down, exact resume, LoRA-only updates."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from acestep_jax.lora import lora_state_dict, read_lora
from acestep_jax.presets import preset_config
from acestep_jax.sharding import make_mesh
from acestep_jax.training.config import TrainConfig
from acestep_jax.training.data import synthetic_examples
from acestep_jax.training.trainer import Trainer, build_model


def tiny_transformer() -> dict:
    d = preset_config("tiny", "transformer").to_dict()
    d.update(num_layers=2, ssl_encoder_depths=[0, 1], lyric_encoder_vocab_size=300)
    d["lyric_encoder"] = dict(d["lyric_encoder"], num_blocks=1)
    return d


def make_cfg(tmp_path=None, **sections) -> TrainConfig:
    base = {
        "model": {"transformer": tiny_transformer(), "dtype": "float32", "remat": "none"},
        "data": {"batch_size": 4, "max_frames": 16, "pad_multiple": 16, "num_threads": 1},
        "optim": {"learning_rate": 1e-3, "warmup_steps": 0, "max_steps": 1000},
        "run": {"output_dir": str(tmp_path or "unused"), "progress": False, "save_every": 0},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return TrainConfig.from_dict(base)


@pytest.fixture(scope="module")
def source():
    # fixed padded shapes (16 frames, 16 text / lyric tokens, 48 SSL frames): one compilation per trainer
    return synthetic_examples(16, text_dim=48, lyric_vocab=300, ssl_dims={"mert": 40, "m-hubert": 24},
                              frames=(14, 16), text_tokens=(3, 12), lyric_tokens=(2, 16), seed=1)


def single_mesh():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _flat(params):
    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(params)}


def test_sharded_training_matches_single_device_and_learns(source):
    # warm-up as the reference: step 0 runs at learning rate 0, step 1 at lr / warmup_steps
    cfg = make_cfg(optim={"learning_rate": 2e-3, "warmup_steps": 10}, data={"batch_size": 8},
                   loss={"text_drop": 0.0, "speaker_drop": 0.0, "lyric_drop": 0.0})
    single = Trainer(cfg, source=source, mesh=single_mesh(), checkpoints=False)
    sharded = Trainer(cfg, source=source, mesh=make_mesh(2, 2, 2), checkpoints=False)
    kernel = sharded.state["params"]["blocks"]["ff"]["in_value"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and kernel.sharding.spec != jax.sharding.PartitionSpec()
    before = _flat(single.state["params"])
    assert all(np.array_equal(v, before[k]) for k, v in _flat(sharded.state["params"]).items())
    losses = []
    for step in range(2):
        batch = next(single.data_iter)
        np.testing.assert_array_equal(batch["latents"], next(sharded.data_iter)["latents"])
        m1 = single.train_step(batch)
        m2 = sharded.train_step(batch)
        for k in ("loss", "denoising_loss", "mert_loss", "grad_norm", "learning_rate"):
            np.testing.assert_allclose(float(m1[k]), float(m2[k]), rtol=1e-5, err_msg=k)
        losses.append(float(m2["denoising_loss"]))
        a, b = _flat(single.state["params"]), _flat(sharded.state["params"])
        assert a.keys() == b.keys()
        moved = max(np.abs(a[k] - before[k]).max() for k in a)
        assert moved == 0 if step == 0 else moved > 1e-4, (step, moved)
        worst = max(np.abs(a[k] - b[k]).max() for k in a)
        assert worst < 1e-5, (step, worst)

    # the sharded run goes on learning
    losses += [m["denoising_loss"] for m in sharded.fit(28)]
    assert sharded.step == 30
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])
    assert last < 0.8 * first, (first, last, losses)  # deterministic: fixed seeds throughout


@pytest.mark.slow
def test_kill_and_resume_is_exact(source, tmp_path):
    cfg = make_cfg(tmp_path, optim={"grad_accum": 2}, data={"batch_size": 2},
                   run={"save_every": 2, "keep": 5, "async_checkpoint": True})
    mesh = make_mesh(2, 1, 1, devices=jax.devices()[:2])
    first = Trainer(cfg, source=source, mesh=mesh)
    uninterrupted = [m["loss"] for m in first.fit(5)]
    first.close()
    assert sorted(first.manager.all_steps()) == [2, 4, 5]
    # a fresh process after a "kill" at step 3: the latest complete checkpoint it knows of is step 2
    second = Trainer(cfg, source=source, mesh=mesh)
    assert second.restore(2) and second.step == 2
    resumed = [m["loss"] for m in second.fit(3)]
    second.close()
    assert resumed == uninterrupted[2:]  # bit-exact: same data order, same random draws
    # resuming from the latest checkpoint continues after the last step
    third = Trainer(cfg, source=source, mesh=mesh)
    assert third.restore() and third.step == 5
    third.close()


def test_lora_trains_only_adapters(source, tmp_path):
    lora = {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["to_q", "to_v", "linear_q", "speaker_embedder"]}
    cfg = make_cfg(tmp_path, model={"lora": lora}, run={"save_every": 2})
    tr = Trainer(cfg, source=source, mesh=single_mesh())
    frozen_before = {k: np.array(v) for k, v in _flat(tr.frozen).items()}
    assert all("lora" in k for k in _flat(tr.state["params"]))
    assert not any("lora" in k for k in frozen_before)
    tr.fit(2)
    tr.close()
    model = tr.current_model()
    state = nnx.state(model, nnx.Param)
    after = _flat(nnx.state(model, nnx.Not(nnx.LoRAParam)))
    for k, v in frozen_before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    adapters = lora_state_dict(model)
    assert any(np.abs(v).max() > 0 for k, v in adapters.items() if "lora_B" in k)
    assert len(state) > 0
    saved = read_lora(tmp_path / "lora" / "step_2")  # the training scale 8 / sqrt(4) folded into B
    assert saved.rank == 4 and saved.scales("reference") == saved.scales("config")
    assert set(saved.pairs) == {k.rsplit(".lora_", 1)[0] for k in adapters}
    for name, (a, b) in saved.pairs.items():
        np.testing.assert_array_equal(a, adapters[f"{name}.lora_A.weight"])
        np.testing.assert_allclose(b, 4.0 * adapters[f"{name}.lora_B.weight"], rtol=1e-7)


def test_build_model_from_reference_weights_with_lora(golden):
    g = golden("transformer")
    cfg = TrainConfig.from_dict({"model": {
        "transformer": g.config, "checkpoint": str(g.path("weights.safetensors")), "dtype": "bfloat16",
        "remat": "dots", "lora": {"r": 2, "target_modules": ["to_q"]},
    }})
    model = build_model(cfg)
    assert model.cfg.dtype == "bfloat16" and model.cfg.param_dtype == "float32" and model.cfg.remat == "dots"
    ref = load_file(g.path("weights.safetensors"))["transformer_blocks.0.attn.to_q.weight"]
    kernel = model.blocks.attn.to_q.kernel[...]  # frozen: stored in the compute dtype (freeze_in_compute_dtype)
    assert kernel.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(kernel[0]), np.asarray(jnp.asarray(ref.T).astype(jnp.bfloat16)))
    lora_a, lora_b = model.blocks.attn.to_q.lora_a[...], model.blocks.attn.to_q.lora_b[...]
    assert lora_a.shape[-1] == 2 and lora_a.dtype == jnp.float32 and not np.asarray(lora_b).any()


def test_rules_and_profile(source, tmp_path):
    """``mesh.rules`` shard the parameters (and the step's activations) differently and the
    step still runs; ``run.profile_dir`` writes a trace of the steps after the first."""
    cfg = make_cfg(tmp_path, data={"batch_size": 8}, mesh={"rules": {"heads": None, "mlp": None}},
                   run={"profile_dir": str(tmp_path / "trace"), "profile_steps": 1})
    trainer = Trainer(cfg, source=source, mesh=make_mesh(2, 2, 2), checkpoints=False)
    kernel = trainer.state["params"]["blocks"]["ff"]["in_value"]["kernel"]
    assert tuple(kernel.sharding.spec) == (None, "fsdp", None)  # mlp replicated by the rules
    assert set(trainer.state) == {"step", "params", "opt_state", "key"}
    assert trainer.shardings.batch.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"))
    losses = [m["loss"] for m in trainer.fit(2)]
    assert all(np.isfinite(losses))
    assert list((tmp_path / "trace").rglob("*.xplane.pb")), "no profiler trace written"
