"""The training loop: data -> compiled step -> logging, evaluation and checkpoints (DESIGN.md §6).

:func:`train` runs a RunConfig in a run directory. If the directory already holds checkpoints it resumes
from the newest good one: params, optimizer state, step and RNG are restored, and because batch ``s`` is a
pure function of (seed, s) (:class:`jaxlm.data.packing.ArrayData`), the resumed run computes exactly the
steps the uninterrupted one would have, bit for bit.

The step is compiled in one place, :func:`compile_step`, through :class:`jaxlm.parallel.Parallel`
(``jax.jit`` with shardings and the state donated on a ``(data, fsdp, tensor)`` mesh, or ``jax.pmap``), so
``mesh.*`` overrides change the parallelism and nothing else.

Logged per ``train.log_every`` steps to ``RUN_DIR/metrics.jsonl`` (one JSON object per line), TensorBoard
(``RUN_DIR/tb``) and the progress bar: ``step``, ``loss``, ``nll``, ``ppl``, ``accuracy``, ``grad_norm``,
``lr``, ``tokens_per_s`` and ``mfu``; ``eval_*`` at evaluation steps. MFU (model FLOPs utilisation) =
``(6 N + 12 L T D) * tokens/s / (peak FLOP/s * devices)`` (:func:`jaxlm.metrics.flops_per_token`); the peak
comes from ``train.peak_flops`` or a table by device kind — on CPU it is only an estimate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np

from jaxlm import metrics as M
from jaxlm import params as P
from jaxlm.config import ConfigError, parse_step
from jaxlm.data import pipeline
from jaxlm.fileio import copy_atomic, private_tmp
from jaxlm.models import family_of
from jaxlm.parallel import Parallel
from jaxlm.train import config as C
from jaxlm.train.checkpoint import Checkpointer
from jaxlm.train.optim import learning_rate, make_optimizer
from jaxlm.train.state import create_state
from jaxlm.train.step import make_eval_step, make_train_step
from jaxlm.train.tasks import make_task

FAULT_ENV = "JAXLM_FAULT_HANG_AT_STEP"  # tests: hang inside this step (to be killed with SIGKILL there)


class TrainingError(RuntimeError):
    """Training stopped (NaN/inf loss, ...); the message names the step and the last good checkpoint."""


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and check that files can be written there (ConfigError naming the fix if not)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # one probe per process: the processes of a multi-process run share run_dir, and one removing a
        # shared probe while another still writes it made the check fail at random
        probe = private_tmp(run_dir / ".write-test")
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run directory {run_dir} is not writable ({e.strerror}); choose another --run-dir.") \
            from None


def compile_step(par: Parallel, step, state):
    """The ONE place the train step is compiled: ``jax.jit`` with shardings and donated state (or
    ``jax.pmap``), by :meth:`jaxlm.parallel.Parallel.compile`."""
    return par.compile(step, state, donate=True)


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
    ck = Checkpointer(run_dir, best_metric=src.train.best_metric, best_mode=src.train.best_mode, read_only=True,
                      report=lambda m: None)
    try:
        return ck.restore_params(P.abstract(family_of(src.model).spec(src.model)), step)
    finally:
        ck.manager.close()


def evaluate(eval_fn, params, data, batch_size: int, max_batches: int | None, par: Parallel) -> dict:
    """Token-weighted means over up to ``max_batches`` eval batches: eval_loss, eval_nll, eval_ppl,
    eval_accuracy, eval_tokens."""
    tot: dict[str, float] = {}
    for b in data.sequential(batch_size, max_batches):
        m = jax.device_get(eval_fn(params, par.place_batch(b, for_eval=True)))
        for k in ("loss_sum", "nll_sum", "correct_sum", "weight_sum"):
            tot[k] = tot.get(k, 0.0) + float(m[k])
    w = max(tot.get("weight_sum", 0.0), 1e-9)
    nll = tot.get("nll_sum", 0.0) / w
    return {"eval_loss": tot.get("loss_sum", 0.0) / w, "eval_nll": nll, "eval_ppl": M.perplexity(nll),
            "eval_accuracy": tot.get("correct_sum", 0.0) / w, "eval_tokens": tot.get("weight_sum", 0.0)}


class _Signals:
    """SIGTERM/SIGINT set a flag the loop checks after each step (save, then stop); a second SIGINT
    interrupts at once."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def _truncate_metrics(path: Path, upto: int) -> None:
    """Keep only the log lines of steps <= ``upto`` (a resumed run rewrites what came after)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= upto]
    path.write_text("".join(ln + "\n" for ln in keep))


def plot_losses(metrics_file: Path, out: Path) -> Path | None:
    """Train (and eval) loss against step as a PNG; None when there is nothing to plot."""
    if not metrics_file.exists():
        return None
    rows = [json.loads(ln) for ln in metrics_file.read_text().splitlines() if ln.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not tr and not ev:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if tr:
        ax.plot(*zip(*tr), label="train loss")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _check_config(run_dir: Path, run: C.RunConfig, say) -> None:
    f = run_dir / "config.json"
    if not f.exists():
        return
    try:
        old = C.load(f)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{f} cannot be read ({e}); use a new --run-dir.") from e
    for section in ("model", "data"):
        if getattr(old, section) != getattr(run, section):
            a, b = C.to_json(old)[section], C.to_json(run)[section]
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConfigError(f"{run_dir} holds a run with a different {section} config (differs in {diff}); "
                              f"resume with the same settings or choose a new --run-dir.")
    if old.train != run.train:
        a, b = C.to_json(old)["train"], C.to_json(run)["train"]
        say("resuming with changed train settings: "
            + ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a) if a.get(k) != b.get(k)))


_LOOP_ONLY = ("log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "best_metric",
              "best_mode", "async_checkpoint", "init_from", "init_step", "peak_flops", "progress", "tensorboard",
              "plot")
_BUILT: dict = {}  # (task, model cfg, train cfg, mesh cfg, micro batch) -> optimizer, Parallel, compiled steps


def _build(task, cfg, t, mesh_cfg, micro: int) -> dict:
    """The optimizer, :class:`Parallel` and step functions of a run, memoised per configuration so that
    training the same configuration again in one process (tests, notebooks, resume) reuses the compiled
    steps instead of compiling them again."""
    loop_only = {f: getattr(C.TrainConfig(), f) for f in _LOOP_ONLY}
    k = (task, cfg, dataclasses.replace(t, **loop_only), mesh_cfg, micro, jax.device_count())
    if k not in _BUILT:
        opt = make_optimizer(t, cfg)
        par = Parallel(mesh_cfg, model_cfg=cfg, batch_size=micro)
        b = {"opt": opt, "par": par,
             "step_fn": make_train_step(task, cfg, opt, grad_axis_name=par.grad_axis_name)}
        if par.mode == "jit":  # par.init_state, but jitted once per configuration
            fn = lambda key: create_state(key, cfg, opt)  # noqa: E731
            shapes = jax.eval_shape(fn, jax.random.key(0))
            b["init"] = jax.jit(fn, out_shardings=par.state_shardings(shapes))
        if len(_BUILT) > 8:
            _BUILT.clear()
        _BUILT[k] = b
    return _BUILT[k]


def train(run: C.RunConfig, run_dir: str | Path, *, quiet: bool = False) -> dict:
    """Train (or resume) ``run`` in ``run_dir``. Returns a summary dict: ``step``, ``loss`` (last logged),
    ``last_eval`` (dict), ``interrupted`` (None or the signal name), ``resumed_from`` (step or None),
    ``initialised_from`` ({"run", "step"} of ``train.init_from``, fresh runs only, else None), ``run_dir``,
    ``info`` (data facts), ``first_eval`` (eval before training, fresh runs only)."""
    run = C.resolve(run)
    t, run_dir = run.train, Path(run_dir)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    check_writable(run_dir)
    _check_config(run_dir, run, say)
    main = jax.process_index() == 0  # multi-process runs share RUN_DIR: only process 0 writes its files
    if main:
        C.save(run, run_dir / "config.json")
    if t.init_from and not (run_dir / pipeline.TOKENIZER_FILE).exists() \
            and (Path(t.init_from) / pipeline.TOKENIZER_FILE).exists():
        copy_atomic(Path(t.init_from) / pipeline.TOKENIZER_FILE, run_dir / pipeline.TOKENIZER_FILE)

    prep = pipeline.prepare(run, run_dir)
    say(f"data: {prep.info}")
    task = make_task(t.task, **pipeline.task_options(run, prep))
    cfg = run.model
    micro = t.batch_size // t.grad_accum
    b = _build(task, cfg, t, run.mesh, micro)
    par, opt = b["par"], b["opt"]
    key = jax.random.key(t.seed)

    ckpt = Checkpointer(run_dir, keep=t.keep_checkpoints, best_metric=t.best_metric, best_mode=t.best_mode,
                        async_save=t.async_checkpoint, report=say)
    plain_like = jax.eval_shape(lambda k: create_state(k, cfg, opt), key)
    restored = ckpt.restore(par.abstract_state(plain_like)) if ckpt.steps() else None
    resumed_from = initialised_from = None
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        resumed_from = start
        state = par.place_state(state) if par.mode == "pmap" else state
        say(f"resuming from checkpoint step {start} in {ckpt.dir}")
    elif t.init_from:
        src_params, src_step = run_params(t.init_from, step=parse_step(t.init_step))
        initialised_from = {"run": str(t.init_from), "step": int(src_step)}
        fresh = family_of(cfg).init(jax.random.fold_in(key, 0), cfg)
        params, new = merge_params(fresh, src_params, t.init_from)
        say(f"initialised from {t.init_from} (step {src_step}); new parameters: {new or 'none'}")
        state = par.place_state(create_state(key, cfg, opt, params=params))
        start = 0
    else:
        state = b["init"](key) if "init" in b else par.init_state(create_state, key, cfg, opt)
        start = 0
    if "step" not in b:
        b["step"] = compile_step(par, b["step_fn"], state)
    plain = par.unreplicate(state)
    if "eval" not in b:
        b["eval"] = par.compile_eval(make_eval_step(task, cfg), plain.params)
    step_c, eval_c = b["step"], b["eval"]

    metrics_file = run_dir / "metrics.jsonl"
    if main and resumed_from is not None:
        _truncate_metrics(metrics_file, start)
    elif main and metrics_file.exists():
        metrics_file.unlink()
    tb = None
    if t.tensorboard and main:
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(run_dir / "tb"))

    n_params = P.count(plain.params)
    layers = cfg.n_layers + getattr(cfg, "dec_layers", 0)
    seq = next(iter(prep.train.arrays.values())).shape[1] if prep.train.arrays else 1
    fpt = M.flops_per_token(n_params, layers, seq, cfg.d_model)
    peak = (t.peak_flops or M.peak_flops()) * jax.device_count()
    tokens_per_step = t.batch_size * seq
    report = par.report()  # how every parameter is sharded: RUN_DIR/sharding.txt, summary and warning here
    if main:
        (run_dir / "sharding.txt").write_text(report + "\n")
    say(f"model: {type(cfg).family} {n_params:,} parameters; {report.splitlines()[0]}")
    for line in report.splitlines()[1:]:
        if line.startswith(("parameters:", "WARNING")):
            say(line)

    def do_eval(params) -> dict:
        if prep.eval is None:
            return {}
        return evaluate(eval_c, params, prep.eval, t.batch_size, t.eval_batches, par)

    first_eval = None
    if resumed_from is None and prep.eval is not None:
        first_eval = do_eval(plain.params)
        say("eval before training: " + ", ".join(f"{k} {v:.4f}" for k, v in first_eval.items()))

    fault = int(os.environ.get(FAULT_ENV, "0") or 0)
    last = {"loss": float("nan")}
    last_eval: dict = {}
    last_saved = max(ckpt.steps(), default=None)
    pending: list[tuple[int, list]] = []
    timer = {"t": None, "steps": 0}
    bar = None
    if t.progress and not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def flush() -> None:
        """Pull pending step metrics to the host, stop on NaN/inf, write the logged steps."""
        nonlocal last
        if not pending:
            return
        host = jax.device_get([ms for _, ms in pending])
        now = time.perf_counter()
        rate = None
        if timer["t"] is not None and timer["steps"]:
            rate = timer["steps"] * tokens_per_step / (now - timer["t"])
        for (s, _), ms in zip(pending, host):
            w = np.array([float(m["tokens"]) for m in ms])
            mean = {k: float(np.average([float(m[k]) for m in ms], weights=w if w.sum() > 0 else None))
                    for k in ("loss", "nll", "accuracy")}
            mean["grad_norm"] = float(np.mean([float(m["grad_norm"]) for m in ms]))
            mean["tokens"] = float(w.sum())
            if not math.isfinite(mean["loss"]) or not math.isfinite(mean["grad_norm"]):
                raise TrainingError(
                    f"loss is {mean['loss']} (grad norm {mean['grad_norm']}) at step {s}: training stopped. "
                    f"The last good checkpoint is "
                    + (f"step {last_saved} in {ckpt.dir}" if last_saved is not None else "none (nothing saved)")
                    + "; it was not replaced. Lower train.lr, set train.clip_norm, or check the data.")
            if s % t.log_every == 0 or s == t.steps:
                row = {"step": s, **mean, "ppl": M.perplexity(mean["nll"]), "lr": learning_rate(t, cfg, s - 1)}
                if rate is not None:
                    row["tokens_per_s"] = rate
                    row["mfu"] = fpt * rate / peak
                _log(row)
                last = row
        pending.clear()
        timer["t"], timer["steps"] = now, 0

    def _log(row: dict) -> None:
        if main:
            with metrics_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    tb.add_scalar(("eval/" if k.startswith("eval_") else "train/") + k.removeprefix("eval_"),
                                  v, row["step"])
        if bar is not None and "loss" in row:
            post = {"loss": f"{row['loss']:.4f}"}
            if "tokens_per_s" in row:
                post["tok/s"] = f"{row['tokens_per_s']:.0f}"
            bar.set_postfix(post, refresh=False)

    def save(s: int, eval_metrics: dict) -> None:
        nonlocal last_saved
        plain_state = par.unreplicate(state)
        meta = {"data_position": {"step": s, "seed": t.seed, "batch_size": t.batch_size,
                                  "epoch": prep.train.position(s, t.batch_size)[0]},
                "loss": last.get("loss"), **{k: v for k, v in eval_metrics.items()}}
        if ckpt.save(s, plain_state, meta, eval_metrics):
            last_saved = s

    interrupted = None
    s = start
    try:
        with _Signals() as sig:
            while s < t.steps:
                if fault and s + 1 == fault:
                    ckpt.wait()  # the earlier save is complete, as it would be in a long real step
                    print(f"fault injection: hanging in step {fault}", file=sys.stderr, flush=True)
                    while not sig.received:  # SIGKILL ends it here; SIGTERM/SIGINT save step s and stop
                        time.sleep(0.1)
                    flush()
                    save(s, {})
                    interrupted = sig.received
                    say(f"{interrupted} received: saved checkpoint step {s}; rerun the same command to resume.")
                    break
                batch = prep.train.batch(s, t.batch_size)
                ms = []
                for j in range(t.grad_accum):
                    mb = {k: v[j * micro:(j + 1) * micro] for k, v in batch.items()}
                    state, m = step_c(state, par.place_batch(mb))
                    ms.append(m)
                s += 1
                pending.append((s, ms))
                timer["steps"] += 1
                if timer["t"] is None:  # the first step includes compilation: time from its end
                    jax.block_until_ready(ms[-1])
                    flush()
                if bar is not None:
                    bar.update(1)
                is_eval = (t.eval_every and s % t.eval_every == 0) or s == t.steps
                is_ckpt = (t.checkpoint_every and s % t.checkpoint_every == 0) or s == t.steps or sig.received
                if s % t.log_every == 0 or is_eval or is_ckpt or len(pending) >= 100:
                    flush()
                ev = {}
                if is_eval and prep.eval is not None:
                    ev = do_eval(par.unreplicate(state).params)
                    last_eval = ev
                    _log({"step": s, **ev})
                    say(f"step {s}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
                if is_ckpt:
                    save(s, ev)
                if ev or is_ckpt:  # keep evaluation and saving out of the tokens/s window
                    timer["t"], timer["steps"] = time.perf_counter(), 0
                if sig.received:
                    interrupted = sig.received
                    say(f"{interrupted} received: saved checkpoint step {s}; rerun the same command to resume.")
                    break
            flush()
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()
        if tb is not None:
            tb.close()
    png = plot_losses(metrics_file, run_dir / "loss.png") if t.plot and main else None
    return {"step": s, "loss": last.get("loss"), "last_eval": last_eval, "first_eval": first_eval,
            "interrupted": interrupted, "resumed_from": resumed_from,
            "initialised_from": initialised_from, "run_dir": str(run_dir),
            "info": prep.info, "plot": None if png is None else str(png), "last_checkpoint": last_saved}
