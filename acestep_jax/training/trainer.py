"""Sharded training of the ACE-Step transformer (full or LoRA fine-tuning).

The model is split into trainable parameters (``nnx.Param``, or only ``nnx.LoRAParam`` with
LoRA) and frozen state. The train state ``{"step", "params", "opt_state", "key"}`` lives on a
``(data, fsdp, tensor)`` mesh; one jitted step scans over ``grad_accum`` micro-batches (each
sharded over ``("data", "fsdp")``), then applies one clipped AdamW update. Randomness of step
``s`` is ``fold_in(key, s)``, so a resumed run replays an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from acestep_jax import distributed
from acestep_jax.files import check_free_space, wait_until_settled
from acestep_jax.models.transformer import (
    ACEStepTransformer,
    TransformerConfig,
    gpu_transformer_settings,
)
from acestep_jax.profiling import StepTrace
from acestep_jax.sharding import axis_rules, make_mesh, rules_with, shard_model, state_shardings
from acestep_jax.training.config import TrainConfig
from acestep_jax.training.loss import draw, flow_matching_loss
from acestep_jax.training.optim import lr_schedule, make_optimizer

log = logging.getLogger("acestep_jax.training")

BATCH_AXES = ("data", "fsdp")
UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a checkpoint being written
_STEP_CACHE: dict = {}  # trainers of one setup share the compiled step


# ----------------------------------------------------------------------------- model
def transformer_config(cfg: TrainConfig) -> TransformerConfig:
    """The transformer config named by ``cfg.model`` with the training dtypes and remat.

    ``model.transformer``: a preset name (``tiny``, ``full``), a config dict, or a JSON
    config file (or a folder holding ``config.json``).
    """
    from acestep_jax.presets import PRESETS, preset_dict

    m = cfg.model
    src = m.transformer
    if isinstance(src, str) and src in PRESETS:
        src = preset_dict(src, "transformer")
    elif isinstance(src, str):
        path = os.path.join(src, "config.json") if os.path.isdir(src) else src
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model.transformer: {src} is neither a preset {PRESETS} nor a config file")
        with open(path) as f:
            src = json.load(f)
    if not isinstance(src, dict):
        raise TypeError("model.transformer must be a preset name, a config dict or a path to a JSON config")
    return TransformerConfig.from_dict(src, **model_options(cfg))


def model_options(cfg: TrainConfig) -> dict:
    """Transformer config values the trainer sets: the training dtypes and remat, and this
    device's training settings (:func:`~acestep_jax.models.transformer.gpu_transformer_settings`)."""
    m = cfg.model
    return {"dtype": m.dtype, "param_dtype": m.param_dtype, "remat": m.remat, **gpu_transformer_settings(training=True)}


def lora_config(cfg: TrainConfig):
    """The :class:`~acestep_jax.lora.LoraConfig` of ``cfg.model.lora`` (dict or JSON path), or ``None``."""
    from acestep_jax.lora import LoraConfig

    src = cfg.model.lora
    if src is None:
        return None
    if isinstance(src, str):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"model.lora config not found: {src}")
        with open(src) as f:
            src = json.load(f)
    return LoraConfig.from_dict(src)


def build_model(cfg: TrainConfig, mesh: jax.sharding.Mesh | None = None) -> ACEStepTransformer:
    """The transformer to train, with LoRA adapters attached when ``model.lora`` is set.

    ``model.checkpoint`` may be a converted acestep-jax checkpoint (or its ``transformer/``
    folder; restored straight into its sharding on ``mesh``), a reference checkpoint folder or
    Hub id (converted once and cached), or reference transformer weights (a safetensors file or
    ``ace_step_transformer/`` folder). Its own config is used, with the training dtypes and
    remat. Without a checkpoint the model named by ``model.transformer`` is randomly initialised.
    """
    m = cfg.model
    opts = model_options(cfg)
    ckpt = m.checkpoint
    if ckpt is None:
        model = _random_model(transformer_config(cfg), cfg.run.seed, mesh)
    else:
        from acestep_jax.convert.checkpoint import load_component
        from acestep_jax.convert.components import TRANSFORMER

        folder = _transformer_folder(ckpt, m.param_dtype)
        if folder is not None:
            model = load_component(folder, TRANSFORMER, mesh=mesh, **opts)
        else:
            from acestep_jax.convert.transformer import load_transformer

            tcfg = transformer_config(cfg)
            if os.path.isfile(os.path.join(ckpt, "config.json")):
                with open(os.path.join(ckpt, "config.json")) as f:
                    tcfg = TransformerConfig.from_dict(json.load(f), **opts)
            model = load_transformer(ckpt, tcfg)
    lcfg = lora_config(cfg)
    if lcfg is not None:
        from acestep_jax.lora import add_lora, freeze_in_compute_dtype

        add_lora(model, lcfg, nnx.Rngs(params=cfg.run.seed + 1))
        freeze_in_compute_dtype(model)
    return model


def _random_model(tcfg: TransformerConfig, seed: int, mesh) -> ACEStepTransformer:
    """A randomly initialised transformer, created directly in its shardings on ``mesh``."""
    if mesh is None:
        return ACEStepTransformer(tcfg, rngs=nnx.Rngs(seed))
    graphdef, init = _sharded_init(tcfg, mesh)
    return nnx.merge(graphdef, init(jax.random.key(seed)))


@functools.lru_cache(maxsize=4)
def _sharded_init(tcfg: TransformerConfig, mesh):
    """``(graphdef, init)``: ``init(key)`` is the transformer's jitted random initialisation into its
    shardings on ``mesh``, one program for every seed (a resumed or repeated run compiles it once)."""

    def create(key):
        return ACEStepTransformer(tcfg, rngs=nnx.Rngs(key))

    graphdef, abstract = nnx.split(nnx.eval_shape(create, jax.random.key(0)))
    return graphdef, jax.jit(lambda key: nnx.state(create(key)), out_shardings=state_shardings(abstract, mesh))


def _transformer_folder(ckpt: str, param_dtype: str) -> str | None:
    """The converted transformer component folder for ``ckpt`` (``None``: plain reference weights)."""
    if os.path.isfile(os.path.join(ckpt, "params", "index.json")):
        return ckpt
    if os.path.isfile(ckpt) or os.path.isfile(os.path.join(ckpt, "diffusion_pytorch_model.safetensors")):
        return None
    from acestep_jax.convert.release import component_folder, resolve_checkpoint

    return os.fspath(component_folder(resolve_checkpoint(ckpt, param_dtype=param_dtype), "transformer"))


# ----------------------------------------------------------------------------- step
def _train_filter(lora: bool):
    return nnx.LoRAParam if lora else nnx.Param


def make_train_step(graphdef, cfg: TrainConfig, tx: optax.GradientTransformation) -> Callable:
    """``step(state, frozen, batch) -> (state, metrics)``; batch leaves are ``[grad_accum, B, ...]``."""
    schedule = lr_schedule(cfg.optim)

    def loss_fn(params, frozen, micro, key):
        model = nnx.merge(graphdef, params, frozen)
        return flow_matching_loss(model, micro, draw(key, micro["latents"].shape, cfg.loss), cfg.loss)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, frozen, batch):
        params = state["params"]
        key = jax.random.fold_in(state["key"], state["step"])
        accum = jax.tree.leaves(batch)[0].shape[0]

        def body(carry, xs):
            grads_sum, metrics_sum = carry
            micro, i = xs
            (_, metrics), grads = grad_fn(params, frozen, micro, jax.random.fold_in(key, i))
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            metrics_sum = jax.tree.map(jnp.add, metrics_sum, metrics)
            return (grads_sum, metrics_sum), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        first = jax.tree.map(lambda x: x[0], batch)
        metric_shapes = jax.eval_shape(loss_fn, params, frozen, first, key)[1]
        m0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes)
        (grads, metrics), _ = jax.lax.scan(body, (zeros, m0), (batch, jnp.arange(accum)))
        grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), grads, params)
        metrics = jax.tree.map(lambda m: m / accum, metrics)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = schedule(state["step"])
        new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state, "key": state["key"]}
        return new_state, metrics

    return step


def _compiled_step(graphdef, cfg: TrainConfig, mesh, shardings: TrainShardings):
    """The jitted train step for this model structure, config (but ``run``) and mesh."""
    key = (graphdef, mesh, json.dumps({k: v for k, v in cfg.to_dict().items() if k != "run"}, sort_keys=True,
                                      default=str))
    if key not in _STEP_CACHE:
        replicated = NamedSharding(mesh, P())
        _STEP_CACHE[key] = jax.jit(
            make_train_step(graphdef, cfg, make_optimizer(cfg.optim)),
            in_shardings=(shardings.state, shardings.frozen, shardings.batch),
            out_shardings=(shardings.state, replicated),
            donate_argnums=(0,),
        )
    return _STEP_CACHE[key]


def _check_batch(cfg: TrainConfig, mesh) -> None:
    batch_ways = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if cfg.data.batch_size % batch_ways:
        raise ValueError(
            f"data.batch_size {cfg.data.batch_size} is not divisible by the mesh's data×fsdp = {batch_ways}"
        )
    if cfg.data.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size {cfg.data.batch_size} is not divisible by {jax.process_count()} hosts")


# ----------------------------------------------------------------------------- train state
@dataclass(frozen=True)
class TrainShardings:
    """Where the train state, the frozen model state and the batches live on the mesh."""

    state: dict  # {"step", "params", "opt_state", "key"} → NamedSharding trees
    frozen: nnx.State
    batch: NamedSharding  # [grad_accum, B, ...] leaves, B over the batch axes


def init_train_state(cfg: TrainConfig, model: ACEStepTransformer, mesh: jax.sharding.Mesh):
    """Place ``model`` on ``mesh`` and build the initial train state ``{"step", "params",
    "opt_state", "key"}`` in its shardings; returns ``(state, shardings)``.

    The optimizer state is initialised abstractly first (``eval_shape``), its shardings
    follow the parameters' logical axes, and the real one is created by ``jit`` with those
    ``out_shardings``, so nothing is ever materialised unsharded. Call under
    :func:`acestep_jax.sharding.axis_rules` to use other rules.
    """
    shard_model(model, mesh)
    _, params, frozen = nnx.split(model, _train_filter(cfg.model.lora is not None), ...)
    tx = make_optimizer(cfg.optim)
    replicated = NamedSharding(mesh, P())
    param_shardings = state_shardings(params, mesh)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, jax.eval_shape(tx.init, params), param_shardings,
        transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    shardings = TrainShardings(
        state={"step": replicated, "params": param_shardings, "opt_state": opt_shardings, "key": replicated},
        frozen=state_shardings(frozen, mesh),
        batch=NamedSharding(mesh, P(None, BATCH_AXES)),
    )
    state = {
        "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
        "params": params,
        "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
        "key": jax.device_put(jax.random.PRNGKey(cfg.run.seed), replicated),
    }
    return state, shardings


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """The training loop: steps, data, checkpoints and logging around :func:`init_train_state`.

    ``source``: a random-access sequence of examples (default: the ``cfg.data.path`` records, or
    without a path ``cfg.data.synthetic`` random examples). ``eval_fn(trainer, step)``: optional hook run every
    ``cfg.run.eval_every`` steps (overrides ``cfg.run.eval_fn``).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model: ACEStepTransformer | None = None,
        source=None,
        mesh: jax.sharding.Mesh | None = None,
        eval_fn: Callable | None = None,
        checkpoints: bool = True,
        writer=None,
    ):
        self.cfg = cfg
        self.mesh = mesh or make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
        self.rules = rules_with(cfg.mesh.rules)
        _check_batch(cfg, self.mesh)
        with axis_rules(self.rules):
            self.model = model if model is not None else build_model(cfg, self.mesh)
            self.state, self.shardings = init_train_state(cfg, self.model, self.mesh)
        self.lora = lora_config(cfg)
        self.graphdef, _, self.frozen = nnx.split(self.model, _train_filter(self.lora is not None), ...)
        self._step = distributed.together(_compiled_step(self.graphdef, cfg, self.mesh, self.shardings), "train step")

        self.source = source if source is not None else self._default_source()
        if len(self.source) == 0:
            raise ValueError("the training data holds no examples")
        from acestep_jax.training.data import check_compatible

        check_compatible(self.source[0], self.model.cfg)
        self._data_iter = None
        self._hosts_met = False
        self.eval_fn = eval_fn if eval_fn is not None else _import_fn(cfg.run.eval_fn)
        self.manager = self._checkpoint_manager() if checkpoints else None
        self.writer = writer
        self.history: list[dict] = []

    # ------------------------------------------------------------------ data
    def _default_source(self):
        d = self.cfg.data
        if d.path is None and d.synthetic > 0:
            from acestep_jax.training.data import synthetic_examples

            c = self.model.cfg
            return synthetic_examples(
                d.synthetic, text_dim=c.text_embedding_dim, lyric_vocab=c.lyric_encoder_vocab_size,
                speaker_dim=c.speaker_embedding_dim,
                ssl_dims=dict(zip(c.ssl_names, c.ssl_latent_dims)), seed=d.seed,
                frames=(max(1, d.max_frames // 2), d.max_frames),
            )
        if d.path is None:
            raise ValueError("no training data: set data.path (record files) or data.synthetic")
        from acestep_jax.training.records import RecordSource

        return RecordSource(d.path)

    @property
    def data_iter(self):
        if self._data_iter is None:
            from acestep_jax.training.data import make_dataset

            local = self.cfg.data.batch_size * self.cfg.optim.grad_accum // jax.process_count()
            ds = make_dataset(self.source, self.cfg.data, batch_size=local, micro_batches=self.cfg.optim.grad_accum,
                              ssl_names=self.model.cfg.ssl_names)
            self._data_iter = iter(ds)
        return self._data_iter

    def _global_batch(self, local: dict) -> dict:
        accum = self.cfg.optim.grad_accum
        if jax.process_count() > 1:  # hosts padded their batches apart: agree on the largest shapes
            from jax.experimental import multihost_utils

            from acestep_jax.training.data import pad_batch

            if not self._hosts_met:  # the first collective: the hosts loaded and read at their own pace
                distributed.barrier("first batch")
                self._hosts_met = True
            keys = sorted(local)
            dims = np.concatenate([np.shape(local[k]) for k in keys]).astype(np.int64)
            agreed = np.max(multihost_utils.process_allgather(dims), axis=0)
            shapes, at = {}, 0
            for k in keys:
                shapes[k] = agreed[at : at + np.ndim(local[k])]
                at += np.ndim(local[k])
            local = pad_batch(local, shapes)

        def put(x):
            x = np.asarray(x)
            x = x.reshape(accum, x.shape[0] // accum, *x.shape[1:])
            shape = (accum, x.shape[1] * jax.process_count(), *x.shape[2:])
            return jax.make_array_from_process_local_data(self.shardings.batch, x, shape)

        return jax.tree.map(put, local)

    # ------------------------------------------------------------------ steps
    @property
    def step(self) -> int:
        return int(self.state["step"])

    def train_step(self, batch: dict) -> dict:
        """One optimizer step on a host-local batch of ``batch_size * grad_accum / hosts`` examples."""
        with jax.set_mesh(self.mesh), axis_rules(self.rules):
            self.state, metrics = self._step(self.state, self.frozen, self._global_batch(batch))
        return metrics

    def fit(self, steps: int | None = None) -> list[dict]:
        """Train until ``steps`` more steps (default ``run.steps``, else to ``optim.max_steps``) are done.

        Returns the metrics of the steps run here (floats).
        """
        run = self.cfg.run
        n = steps if steps is not None else run.steps
        target = min(self.cfg.optim.max_steps, self.step + n if n is not None else self.cfg.optim.max_steps)
        bar = None
        if run.progress and jax.process_index() == 0:
            from tqdm import tqdm

            bar = tqdm(total=target, initial=self.step, desc="train", dynamic_ncols=True)
        out = []
        t0 = time.perf_counter()
        profile = StepTrace(run.profile_dir, self.step + 1, run.profile_steps)
        try:
            while self.step < target:
                profile.step(self.step)
                batch = next(self.data_iter)
                metrics = self.train_step(batch)
                step = self.step
                floats = {k: float(v) for k, v in metrics.items()}
                out.append(floats)
                self.history.append(floats)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{floats['loss']:.4f}")
                if run.log_every and step % run.log_every == 0:
                    self._log(step, floats, time.perf_counter() - t0)
                    t0 = time.perf_counter()
                if self.manager is not None and run.save_every and step % run.save_every == 0:
                    self.save()
                if self.eval_fn is not None and run.eval_every and step % run.eval_every == 0:
                    self.eval_fn(self, step)
            if self.manager is not None and self.manager.latest_step() != self.step:
                self.save()
        finally:
            profile.close()
            if bar is not None:
                bar.close()
            self.wait_for_saves()
        return out

    def _log(self, step: int, metrics: dict, seconds: float) -> None:
        if jax.process_index() != 0:
            return
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.add_scalar("train/seconds_per_log", seconds, step)
            self.writer.flush()
        log.info("step %d %s", step, " ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items())))

    # ------------------------------------------------------------------ models out
    def current_model(self) -> ACEStepTransformer:
        """The model with the current trained parameters (shares arrays with the train state)."""
        return nnx.merge(self.graphdef, self.state["params"], self.frozen)

    def save_lora(self, folder: str | None = None) -> str:
        """Write the adapters (PEFT format, training scale folded in: :func:`acestep_jax.lora.save_lora`).

        Call on every host: the adapters are gathered from all hosts and host 0 writes them.
        """
        from acestep_jax.lora import save_lora

        if self.lora is None:
            raise ValueError("save_lora: this run trains no LoRA adapters (model.lora is unset)")
        folder = folder or os.path.join(self.cfg.run.output_dir, "lora", f"step_{self.step}")
        params = self.state["params"]
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(params, tiled=True)
        if jax.process_index() == 0:
            save_lora(nnx.merge(self.graphdef, params, self.frozen), self.lora, folder)
        return os.path.join(folder, "pytorch_lora_weights.safetensors")

    def export_transformer(self, folder: str | None = None) -> str:
        """Write the trained transformer as a checkpoint component folder (replacing an older one).

        ``sample.py --transformer FOLDER`` samples with it and ``convert_weights.py
        --to-reference FOLDER OUT`` exports it to the reference's safetensors.
        """
        from acestep_jax.convert.checkpoint import save_component

        folder = os.path.abspath(folder or os.path.join(self.cfg.run.output_dir, "transformer"))
        tmp = f"{folder}.tmp-{self.step}"
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.current_model()
        save_component(tmp, model, model.cfg)
        if jax.process_index() == 0:
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        return folder

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_manager(self):
        import orbax.checkpoint as ocp

        run = self.cfg.run
        options = ocp.CheckpointManagerOptions(  # cleanup: the unfinished saves of killed runs go at start
            max_to_keep=run.keep, enable_async_checkpointing=run.async_checkpoint, create=True,
            cleanup_tmp_directories=True,
        )
        directory = os.path.abspath(os.path.join(run.output_dir, "checkpoints"))
        return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

    @contextlib.contextmanager
    def _discarding_unfinished_saves(self):
        """Remove the temporary folders of a checkpoint whose save failed (e.g. on a full disk), then re-raise."""
        try:
            yield
        except BaseException:
            if jax.process_index() == 0:
                wait_until_settled(self.manager.directory)
                for tmp in Path(self.manager.directory).glob("*" + UNFINISHED_SUFFIX + "*"):
                    shutil.rmtree(tmp, ignore_errors=True)
            raise

    def wait_for_saves(self) -> None:
        """Block until the asynchronous saves are written; a failed one leaves nothing behind."""
        if self.manager is not None:
            with self._discarding_unfinished_saves():
                self.manager.wait_until_finished()

    def check_space(self) -> None:
        """:class:`UsageError` when the checkpoint folder has no room for one more checkpoint."""
        if self.manager is not None:
            needed = sum(x.nbytes for x in jax.tree.leaves(self.state) if hasattr(x, "nbytes"))
            check_free_space(os.fspath(self.manager.directory), needed, f"the checkpoint of step {self.step}")

    def save(self) -> None:
        """Save state and data-iterator position at the current step (async); with LoRA also the adapters."""
        import grain
        import orbax.checkpoint as ocp

        self.check_space()
        snapshot = _IteratorSnapshot(self.data_iter.get_state())
        with self._discarding_unfinished_saves():
            self.manager.save(
                self.step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(self.state), data=grain.checkpoint.CheckpointSave(snapshot)
                ),
            )
        if self.lora is not None:
            self.save_lora()

    def restore(self, step: int | None = None) -> bool:
        """Resume from the latest (or given) checkpoint; returns whether one was found."""
        import grain
        import orbax.checkpoint as ocp

        if self.manager is None:
            return False
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return False
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.state, self.shardings.state
        )
        snapshot = _IteratorSnapshot(None)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(snapshot)
            ),
        )
        self.state = restored["state"]
        self.data_iter.set_state(snapshot.state)
        log.info("resumed from step %d", step)
        return True

    def close(self) -> None:
        if self.manager is not None:
            self.wait_for_saves()
            self.manager.close()
        if self.writer is not None:
            self.writer.close()


class _IteratorSnapshot:
    """Data-iterator state captured at save time (so an async save never sees a later position)."""

    def __init__(self, state):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state, indent=2).encode()

    def set_state(self, data: bytes) -> None:
        self.state = json.loads(data)

    def start_prefetch(self) -> None:
        pass


def _import_fn(spec: str | None):
    if not spec:
        return None
    if ":" not in spec:
        raise ValueError(f"run.eval_fn must be 'module:function', got {spec!r}")
    module, name = spec.split(":", 1)
    return getattr(importlib.import_module(module), name)


def replace(cfg: TrainConfig, **sections) -> TrainConfig:
    """``cfg`` with section fields replaced: ``replace(cfg, optim={"learning_rate": 1e-3})``."""
    return dataclasses.replace(
        cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()}
    )
