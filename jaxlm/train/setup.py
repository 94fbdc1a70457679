"""Everything a training run needs before its first step: :func:`setup` builds a :class:`Setup`.

It checks the run directory, prepares the data, builds (or takes from a :class:`StepCache`) the optimizer,
the :class:`jaxlm.parallel.Parallel` and the compiled steps, opens the :class:`Checkpointer` and produces
the first state: restored from the newest good checkpoint (a resumed run), started from another run's params
(``train.init_from``), or fresh.

Resuming is exact: params, optimizer state, step and RNG are restored, and batch ``s`` is a pure function of
(seed, s) (:class:`jaxlm.data.packing.ArrayData`), so a resumed run computes the steps the uninterrupted one
would have, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm import metrics as M
from jaxlm import params as P
from jaxlm.config import ConfigError, parse_step
from jaxlm.data import pipeline
from jaxlm.fileio import RunDirLocked, RunLock, copy_atomic, write_text_atomic
from jaxlm.finetune import lora
from jaxlm.finetune.lora import LoRAConfig
from jaxlm.models import active_params, family_of
from jaxlm.nn import quant
from jaxlm.parallel import Parallel
from jaxlm.train import config as C
from jaxlm.train import preflight
from jaxlm.train.checkpoint import Checkpointer, StructureMismatch, saved_steps
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import TrainState, create_state
from jaxlm.train.step import make_eval_step, make_train_step
from jaxlm.train.tasks import Task, make_task

# TrainConfig fields that change what the loop does around the step but not the step itself, so runs that
# differ only in these share compiled steps
LOOP_ONLY = ("log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
             "best_metric", "best_mode", "async_checkpoint", "init_from", "init_step", "peak_flops",
             "progress", "tensorboard", "plot", "reset_optimizer", "wandb")


@dataclass
class Compiled:
    """The optimizer, :class:`Parallel` and steps of one step configuration. The train and eval steps are
    compiled on first use (compiling needs a state to take the shardings from)."""

    optimizer: optax.GradientTransformation
    par: Parallel
    step_fn: Callable  # the pure train step
    eval_fn: Callable  # the pure eval step
    init: Callable | None = None  # key -> state, jitted with the state's shardings (jit mode, no LoRA)
    lora: LoRAConfig | None = None  # finetune.lora: state.params are adapters over a frozen base
    _train: Callable | None = field(default=None, repr=False)
    _eval: Callable | None = field(default=None, repr=False)

    def init_state(self, key: jax.Array, cfg) -> TrainState:
        """A fresh state from ``key``, placed as the step expects it."""
        if self.init is not None:
            return self.init(key)
        return self.par.init_state(create_state, key, cfg, self.optimizer)

    def model_params(self, state: TrainState) -> dict:
        """The params the model runs with: ``state.params``, or with LoRA the frozen base combined with the
        adapters (:func:`jaxlm.finetune.lora.combine`: the adapters stay separate, nothing is merged)."""
        if self.lora is None:
            return state.params
        return lora.combine(state.frozen, state.params, self.lora)

    def train_step(self, state: TrainState) -> Callable:
        """``step(state, batch) -> (state, metrics)``, jitted with shardings and the state donated (or
        pmapped) by :meth:`Parallel.compile`; ``state`` only supplies the shardings."""
        if self._train is None:
            self._train = self.par.compile(self.step_fn, state, donate=True)
        return self._train

    def eval_step(self, params: dict) -> Callable:
        """``eval_step(params, batch) -> metrics``, compiled by :meth:`Parallel.compile_eval`."""
        if self._eval is None:
            self._eval = self.par.compile_eval(self.eval_fn, params)
        return self._eval


class StepCache:
    """Memoises :class:`Compiled` per step configuration (task, model, the step-relevant train settings,
    mesh, micro-batch size, device count). The caller owns it: pass the same cache to several
    :func:`jaxlm.train.loop.train` calls in one process (tests, notebooks) and a configuration trained
    again reuses its compiled steps. Holds at most ``max_entries`` configurations (oldest dropped first)."""

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self._entries: dict[tuple, Compiled] = {}

    def get(self, task: Task, run: C.RunConfig) -> Compiled:
        """The :class:`Compiled` of ``run`` with ``task``, built on the first request."""
        t = run.train
        micro = t.batch_size // t.grad_accum
        loop_only = {f: getattr(C.TrainConfig(), f) for f in LOOP_ONLY}
        key = (task, run.model, dataclasses.replace(t, **loop_only), run.mesh, run.finetune, micro,
               jax.device_count())
        if key not in self._entries:
            while len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = build(task, run)
        return self._entries[key]


def build(task: Task, run: C.RunConfig, *, devices=None) -> Compiled:
    """The optimizer, :class:`Parallel` and (not yet compiled) steps of ``run`` with ``task``. ``devices``:
    the mesh's devices (default all; :mod:`jaxlm.plan` passes a TPU slice's compile-only devices)."""
    cfg, t = run.model, run.train
    lcfg = run.finetune.lora.config() if run.finetune.lora.enabled else None
    spec = family_of(cfg).spec(cfg)
    if lcfg is not None:  # the adapters (and their optimizer state) shard by their own logical axes
        spec = P.unflatten(P.flatten(spec) | P.flatten(lora.spec(cfg, lcfg)))
    opt = make_optimizer(t, cfg)
    par = Parallel(run.mesh, model_cfg=cfg, spec=spec, batch_size=t.batch_size // t.grad_accum, devices=devices,
                   seq_len=run.data.seq_len)
    out = Compiled(optimizer=opt, par=par, eval_fn=make_eval_step(task, cfg), lora=lcfg,
                   step_fn=make_train_step(task, cfg, opt, grad_axis_name=par.grad_axis_name, lora=lcfg))
    if par.mode == "jit" and lcfg is None:  # par.init_state, but jitted once per configuration
        fn = lambda key: create_state(key, cfg, opt)  # noqa: E731
        out.init = jax.jit(fn, out_shardings=par.state_shardings(jax.eval_shape(fn, jax.random.key(0))))
    return out


@dataclass
class Setup:
    """What the step loop and its hooks read: the resolved run, its data, compiled steps, checkpointer and
    where the run starts. Built by :func:`setup`."""

    run: C.RunConfig  # resolved (C.resolve)
    run_dir: Path
    say: Callable[..., None]  # prints a log line (nothing when quiet)
    quiet: bool
    main: bool  # process 0: the one that writes RUN_DIR's files in a multi-process run
    prep: pipeline.Prepared
    task: Task
    compiled: Compiled
    ckpt: Checkpointer
    start: int  # the step the run starts from
    resumed_from: int | None
    initialised_from: dict | None  # {"run", "step"} of train.init_from, fresh runs only
    flops_per_token: float
    peak_flops: float  # of all devices together
    tokens_per_step: int
    lock: RunLock | None = None  # the run directory's writer lock (process 0); released when training ends

    @property
    def par(self) -> Parallel:
        return self.compiled.par


def check_config(run_dir: Path, run: C.RunConfig, say: Callable[..., None]) -> list[str]:
    """Refuse to resume a run directory whose model or data config differs from ``run``'s; report changed
    train settings and return them (``"key: old -> new"``). A directory with no checkpoint has nothing to
    resume: its old settings (of a start that failed or stopped before the first save) are replaced."""
    f = run_dir / "config.json"
    if not f.exists():
        return []
    fresh = not saved_steps(run_dir)
    try:
        old = C.load(f)
    except Exception as e:  # noqa: BLE001 - any damage: a partial write, a hand edit, an older version
        if not fresh:
            say(f"{f} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}); it is rewritten "
                f"with this run's settings, and the checkpoints are checked against them on restore.")
        return ["config.json unreadable"]
    if fresh:
        if old != run:
            if old.data != run.data:  # the tokenizer of the earlier start was built from the old data
                (run_dir / pipeline.TOKENIZER_FILE).unlink(missing_ok=True)
            say(f"{run_dir} holds no checkpoint: the settings of its earlier start are replaced.")
        return []
    for section in ("model", "data", "finetune"):
        if getattr(old, section) != getattr(run, section):
            a, b = C.to_json(old)[section], C.to_json(run)[section]
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConfigError(f"{run_dir} holds a run with a different {section} config (differs in {diff}); "
                              f"resume with the same settings or choose a new --run-dir.")
    changed = []
    if old.train != run.train:
        a, b = C.to_json(old)["train"], C.to_json(run)["train"]
        changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a) if a.get(k) != b.get(k)]
        say("resuming with changed train settings: " + ", ".join(changed))
    return changed


def check_tokenizer(run_dir: Path, say: Callable[..., None]) -> None:
    """A damaged ``tokenizer.json`` (not JSON: a partial copy, a full disk) is moved aside, so that
    :func:`pipeline.prepare` builds the tokenizer again from the run's data, as the first start did."""
    f = run_dir / pipeline.TOKENIZER_FILE
    if not f.is_file():
        return
    try:
        json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        dst = f.with_name(f.name + ".damaged")
        f.replace(dst)
        say(f"{f} is damaged ({type(e).__name__}); moved to {dst.name} and built again from the data.")


def merge_params(fresh: dict, loaded: dict, source: str) -> tuple[dict, list[str]]:
    """Start from ``loaded`` (another run's params) where paths and shapes agree; keep ``fresh`` values
    for parameters the source lacks (a new task head). Returns (params, paths kept fresh)."""
    ff, fl = P.flatten(fresh), P.flatten(loaded)
    wrong = [f"{k}: {np.shape(fl[k])} vs {np.shape(v)}" for k, v in ff.items()
             if k in fl and np.shape(fl[k]) != np.shape(v)]
    if wrong:
        raise ConfigError(f"train.init_from={source}: parameter shapes differ ({'; '.join(wrong[:4])}); the "
                          f"model config must match the source run's (same preset and vocab_size).")
    new = sorted(k for k in ff if k not in fl)
    return P.unflatten({k: fl.get(k, v) for k, v in ff.items()}), new


def run_params(run_dir: str | Path, step: int | str | None = None) -> tuple[dict, int]:
    """The params of another run's checkpoint (``step``: a number, "best" or "latest"/None) and its step."""
    src = C.load(Path(run_dir) / "config.json")
    ck = Checkpointer(run_dir, best_metric=src.train.best_metric, best_mode=src.train.best_mode,
                      read_only=True, report=lambda m: None)
    try:
        return ck.restore_params(P.abstract(family_of(src.model).spec(src.model)), step)
    finally:
        ck.manager.close()


LORA_BASE_FILE = "lora_base.json"  # a LoRA run's base model: {"run": DIR, "step": N} or {"seed": S}


def lora_base(run: C.RunConfig, run_dir: str | Path | None = None) -> tuple[dict, dict, list[str]]:
    """The frozen base model of a LoRA run (``finetune.lora``): (params, record, new paths). The base is
    ``train.init_from``'s checkpoint (with fresh values for parameters it lacks, e.g. a new task head: the
    ``new`` paths, which the run trains in full), or the seed's fresh init without ``init_from``. ``run_dir``:
    read the record its first start wrote (:data:`LORA_BASE_FILE`), so a resumed run or a reader of its
    checkpoints gets the same base step even when ``init_step`` was "latest" and the source trained on."""
    cfg, t = run.model, run.train
    f = None if run_dir is None else Path(run_dir) / LORA_BASE_FILE
    if f is not None and f.is_file():
        rec = json.loads(f.read_text())
    else:
        rec = {"run": str(t.init_from), "step": parse_step(t.init_step)} if t.init_from else {"seed": t.seed}
    fresh = family_of(cfg).init(jax.random.fold_in(jax.random.key(t.seed), 0), cfg)
    if "run" not in rec:
        return fresh, {"seed": int(rec["seed"])}, []
    src, step = run_params(rec["run"], step=rec["step"])
    params, new = merge_params(fresh, src, rec["run"])
    return params, {"run": rec["run"], "step": int(step)}, new


def frozen_base(run: C.RunConfig, base: dict) -> dict:
    """The frozen base as a LoRA run holds it: ``base``, or with ``finetune.lora.quantize`` (QLoRA) its matmul
    weights quantized (:func:`jaxlm.nn.quant.quantize`; embeddings and norms stay float)."""
    s = run.finetune.lora
    if not s.quantize:
        return base
    return quant.quantize(base, family_of(run.model).spec(run.model), s.quantize, s.quant_group or None)


def _lora_state(run: C.RunConfig, c: Compiled, key: jax.Array, run_dir: Path | None, say) -> tuple[TrainState, dict]:
    """A fresh LoRA state, placed: adapters (B = 0) plus the base's new parameters as ``params``, the rest of
    the base as ``frozen``; and the base's record (:func:`lora_base`)."""
    cfg = run.model
    base, rec, new = lora_base(run, run_dir)
    fb = P.flatten(base)
    trainable = P.flatten(lora.init(jax.random.fold_in(key, 2), cfg, c.lora)) | {k: fb.pop(k) for k in new}
    frozen = frozen_base(run, P.unflatten(fb))
    state = create_state(key, cfg, c.optimizer, params=P.unflatten(trainable), frozen=frozen)
    n_ad = sum(int(np.size(v)) for k, v in trainable.items() if lora.is_adapter(k))
    n_base = sum(int(np.size(v)) for v in fb.values())
    where = f"{rec['run']} (step {rec['step']})" if "run" in rec else f"a fresh init (seed {rec['seed']})"
    q = run.finetune.lora.quantize
    held = f"; base held as {q}: {quant.weight_bytes(frozen) / 2**20:.2f} MiB (float32 " \
           f"{4 * n_base / 2**20:.2f} MiB)" if q else ""
    say(f"LoRA: rank {c.lora.rank} on {len(lora.targets(cfg, c.lora))} projections, {n_ad:,} adapter "
        f"parameters ({100 * n_ad / max(n_base, 1):.3f} % of the {n_base:,} frozen ones of {where})"
        + (f"; trained in full: {new}" if new else "") + held)
    return c.par.place_state(state), rec


def _mismatch_error(e: StructureMismatch, ckpt: Checkpointer, changed: list[str]) -> ConfigError:
    what = ", ".join(changed) or "none recorded in config.json"
    fix = ("resume with the old train settings, choose a new --run-dir, or pass train.reset_optimizer=true "
           "to restore the params only and start the optimizer state afresh" if e.part == "train" else
           "resume with the old model settings or choose a new --run-dir")
    return ConfigError(f"cannot resume {ckpt.run_dir}: {e} (changed train settings: {what}); nothing was "
                       f"moved or changed. To go on: {fix}.")


def _first_state(run: C.RunConfig, c: Compiled, ckpt: Checkpointer, say,
                 changed: list[str] = ()) -> tuple[Any, int, int | None, dict | None]:
    """(state, start step, resumed_from, initialised_from): the newest good checkpoint of this run, else
    ``train.init_from``'s params, else a fresh state. ``changed``: the train settings that differ from
    the run directory's (:func:`check_config`), named when a checkpoint no longer fits. A LoRA run
    (``finetune.lora``) restores its adapters and rebuilds its frozen base (:func:`lora_base`)."""
    cfg, t, par = run.model, run.train, c.par
    key = jax.random.key(t.seed)
    if c.lora is not None:
        resuming = bool(ckpt.steps())
        fresh, rec = _lora_state(run, c, key, ckpt.run_dir if resuming else None, say)
        if jax.process_index() == 0 and not resuming:  # a resumed run read it
            write_text_atomic(ckpt.run_dir / LORA_BASE_FILE, json.dumps(rec) + "\n")
        plain_like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), fresh)
    else:
        fresh = None
        plain_like = jax.eval_shape(lambda k: create_state(k, cfg, c.optimizer), key)
    try:
        restored = ckpt.restore(par.abstract_state(plain_like), settings_changed=bool(changed)) \
            if ckpt.steps() else None
    except StructureMismatch as e:
        if e.part != "train" or not t.reset_optimizer:
            raise _mismatch_error(e, ckpt, list(changed)) from None
        params, start = ckpt.restore_params(par.abstract_state(plain_like).params, step=e.step)
        if start > t.steps:
            raise _past_end(ckpt, start, t.steps) from None
        say(f"train.reset_optimizer: restored the params of checkpoint step {start}; the optimizer state "
            f"(moments, schedule count) starts afresh.")
        state = create_state(key, cfg, c.optimizer, params=params,
                             frozen=None if fresh is None else par.unreplicate(fresh).frozen)
        state = par.place_state(state.replace(step=jnp.asarray(start * t.grad_accum, jnp.int32)))
        return state, start, start, None
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        if start > t.steps:
            raise _past_end(ckpt, start, t.steps)
        say(f"resuming from checkpoint step {start} in {ckpt.dir}")
        if fresh is not None:  # the checkpoint holds the adapters; the frozen base was rebuilt
            state = state.replace(frozen=par.unreplicate(fresh).frozen)
        return (par.place_state(state) if par.mode == "pmap" else state), start, start, None
    if fresh is not None:
        return fresh, 0, None, ({"run": str(t.init_from), "step": int(rec["step"])} if "run" in rec else None)
    if t.init_from:
        src_params, src_step = run_params(t.init_from, step=parse_step(t.init_step))
        fresh = family_of(cfg).init(jax.random.fold_in(key, 0), cfg)
        params, new = merge_params(fresh, src_params, t.init_from)
        say(f"initialised from {t.init_from} (step {src_step}); new parameters: {new or 'none'}")
        state = par.place_state(create_state(key, cfg, c.optimizer, params=params))
        return state, 0, None, {"run": str(t.init_from), "step": int(src_step)}
    return c.init_state(key, cfg), 0, None, None


def _with_reference(run: C.RunConfig, prep, c: Compiled, state, resumed: bool, say):
    """``prep`` with the DPO reference's summed log-probs (``ref_chosen_logps`` / ``ref_rejected_logps``)
    added to its train and eval arrays. The reference is the run's starting model: the first state's params,
    for a resumed LoRA run its frozen base, for another resumed run the same params rebuilt
    (``train.init_from``'s, or the seed's fresh init)."""
    from jaxlm.data.packing import ArrayData
    from jaxlm.finetune import dpo

    cfg, t = run.model, run.train
    if not resumed:
        ref = c.model_params(c.par.unreplicate(state))
    elif c.lora is not None:  # the base the adapters started from at zero
        ref = c.par.unreplicate(state).frozen
    else:
        fresh = family_of(cfg).init(jax.random.fold_in(jax.random.key(t.seed), 0), cfg)
        ref = merge_params(fresh, run_params(t.init_from, parse_step(t.init_step))[0], t.init_from)[0] \
            if t.init_from else fresh
    say("dpo: computing the reference model's log-probs of every pair")
    train = ArrayData(dpo.precompute_reference(ref, prep.train.arrays, cfg), t.seed)
    ev = None if prep.eval is None else ArrayData(dpo.precompute_reference(ref, prep.eval.arrays, cfg), t.seed)
    return dataclasses.replace(prep, train=train, eval=ev)
def _resume_stream(data, ckpt: Checkpointer, run_dir: Path, step: int) -> None:
    """Move a data stream (``data.streaming``) to the position saved with checkpoint ``step``: the meta's
    ``stream`` (one process) or this process's ``RUN_DIR/stream/<step>/<process>.json``."""
    meta = getattr(ckpt, "restored_meta", None) or {}
    state = meta.get("stream")
    if jax.process_count() > 1:
        f = run_dir / "stream" / str(step) / f"{jax.process_index()}.json"
        state = json.loads(f.read_text()) if f.is_file() else None
    if state is None or int(state.get("step", -1)) != step:
        raise ConfigError(f"{run_dir}: checkpoint step {step} holds no data-stream position for this process "
                          f"(saved without data.streaming, or with another number of processes); resume with "
                          f"the settings it was saved with or choose a new --run-dir.")
    data.load_state_dict(state)


def _past_end(ckpt: Checkpointer, start: int, steps: int) -> ConfigError:
    return ConfigError(f"{ckpt.run_dir} is already trained to step {start}, past train.steps={steps}; nothing "
                       f"to do. Raise train.steps above {start} to train on, evaluate an earlier kept step "
                       f"with `jaxlm eval --step N`, or choose a new --run-dir.")


def setup(run: C.RunConfig, run_dir: str | Path, *, quiet: bool = False,
          cache: StepCache | None = None) -> tuple[Setup, TrainState]:
    """Prepare ``run`` in ``run_dir``: returns the :class:`Setup` and the first state (the state is
    donated to the first step, so it is handed over separately). ``cache`` supplies compiled steps from
    earlier runs of the same configuration (None = build them).

    Takes the run directory's writer lock first (:class:`jaxlm.fileio.RunLock`; process 0 only, so the
    processes of one multi-process job share the directory): a second writer fails at once with a
    ConfigError naming the holder, before it writes anything. ``Setup.lock`` is released by the caller
    (:func:`jaxlm.train.loop.train`) when training ends, or here when setup fails."""
    run_dir = Path(run_dir)
    preflight.check_run_dir(run_dir, C.resolve(run))  # every fault of the directory, nothing written yet
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(run_dir) if jax.process_index() == 0 else None
    except RunDirLocked as e:
        raise ConfigError(str(e)) from None
    try:
        if lock is not None:  # a fresh start keeps, not overwrites, an earlier start's logs
            preflight.keep_history(run_dir, (lambda m: None) if quiet else (lambda m: print(m, flush=True)))
        s, state = _setup(run, run_dir, quiet=quiet, cache=cache)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    s.lock = lock
    return s, state


def _setup(run: C.RunConfig, run_dir: str | Path, *, quiet: bool = False,
           cache: StepCache | None = None) -> tuple[Setup, TrainState]:
    run = C.resolve(run)
    t, run_dir = run.train, Path(run_dir)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    changed = check_config(run_dir, run, say)
    check_tokenizer(run_dir, say)
    main = jax.process_index() == 0  # multi-process runs share RUN_DIR: only process 0 writes its files
    src_tok = Path(t.init_from) / pipeline.TOKENIZER_FILE if t.init_from else None
    if src_tok is not None and src_tok.exists() and not (run_dir / pipeline.TOKENIZER_FILE).exists():
        copy_atomic(src_tok, run_dir / pipeline.TOKENIZER_FILE)

    prep = pipeline.prepare(run, run_dir)
    say(f"data: {prep.info}")
    task = make_task(t.task, **pipeline.task_options(run, prep))
    c = (StepCache() if cache is None else cache).get(task, run)
    ckpt = Checkpointer(run_dir, keep=t.keep_checkpoints, best_metric=t.best_metric, best_mode=t.best_mode,
                        async_save=t.async_checkpoint, report=say)
    try:
        state, start, resumed_from, initialised_from = _first_state(run, c, ckpt, say, changed)
    except BaseException:
        ckpt.close()
        raise
    if t.task == "dpo":  # the frozen reference is the model the run starts from; its log-probs once, up front
        prep = _with_reference(run, prep, c, state, resumed_from is not None, say)
    if resumed_from is not None and hasattr(prep.train, "load_state_dict"):
        _resume_stream(prep.train, ckpt, run_dir, resumed_from)
    if main:  # only now: a refused resume leaves the run directory's config.json as it was
        C.save(run, run_dir / "config.json")

    cfg, par = run.model, c.par
    n_params = P.count({k: v for k, v in P.flatten(c.model_params(par.unreplicate(state))).items()
                        if not lora.is_adapter(k)})
    seq = next(iter(prep.train.arrays.values())).shape[1] if prep.train.arrays else 1
    report = par.report()  # how every parameter is sharded: RUN_DIR/sharding.txt, summary and warning here
    if main:
        (run_dir / "sharding.txt").write_text(report + "\n")
    say(f"model: {type(cfg).family} {n_params:,} parameters; {report.splitlines()[0]}")
    for line in report.splitlines()[1:]:
        if line.startswith(("parameters:", "WARNING")):
            say(line)
    return Setup(
        run=run, run_dir=run_dir, say=say, quiet=quiet, main=main, prep=prep, task=task, compiled=c,
        ckpt=ckpt, start=start, resumed_from=resumed_from, initialised_from=initialised_from,
        # a mixture of experts counts the parameters a token uses (top_k of n_experts experts), not all
        flops_per_token=M.flops_per_token(active_params(cfg, n_params), cfg.n_layers + getattr(cfg, "dec_layers", 0), seq,
                                          cfg.d_model),
        peak_flops=(t.peak_flops or M.peak_flops()) * jax.device_count(),
        tokens_per_step=t.batch_size * seq,
    ), state
