"""Hooks: what the step loop does around each step, and the :class:`Loop` record they read and update.

A hook is any object with some of these methods (subclass :class:`Hook` for no-op defaults):

- ``on_start(loop)``: once, before the first step;
- ``on_step(loop)``: after each optimizer update (``loop.step`` updates done, ``loop.state`` the new state);
- ``on_log(loop, row)``: a metrics row to record (train rows at log steps, ``eval_*`` rows);
- ``on_end(loop)``: once, last, also when a step or a hook raised (``loop.finished`` is False then).

Hooks run in list order (``on_end`` in reverse). :func:`jaxlm.train.loop.train` runs the logs of
:mod:`jaxlm.train.logs` first (so every row is recorded), then the caller's hooks, then :class:`Evaluation`
and :class:`Checkpointing`: a caller's ``on_step`` sees each step before it is evaluated and saved, and this
step's evaluation reaches it through ``on_log``. A hook ends the run after the current step by setting
``loop.stop = True`` (:class:`Checkpointing` then saves that step).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jaxlm import metrics as M
from jaxlm.data.packing import ArrayData
from jaxlm.parallel import Parallel
from jaxlm.train.optim import learning_rate
from jaxlm.train.setup import Setup
from jaxlm.train.state import TrainState

FLUSH_EVERY = 100  # steps whose metrics may wait on the device before they are pulled and checked


class TrainingError(RuntimeError):
    """Training stopped (NaN/inf loss, ...); the message names the step and the last good checkpoint."""


class Hook:
    """No-op base of the hook protocol (see the module docstring)."""

    def on_start(self, loop: Loop) -> None:
        pass

    def on_step(self, loop: Loop) -> None:
        pass

    def on_log(self, loop: Loop, row: dict) -> None:
        pass

    def on_end(self, loop: Loop) -> None:
        pass


class Loop:
    """The state of a running loop, shared by its hooks.

    ``setup`` (:class:`Setup`), ``state`` (the current TrainState: sharded or replicated; :meth:`plain`
    gives the unreplicated one), ``step`` (updates done), ``stop`` (set to end after this step),
    ``signal`` (SIGTERM/SIGINT received, set by :class:`Checkpointing`'s handler), ``interrupted`` (the
    signal the run stopped for), ``last`` (the last logged train row), ``eval`` (this step's eval metrics,
    ``{}`` when it was not evaluated), ``last_eval``, ``first_eval`` (before training, fresh runs),
    ``last_checkpoint`` (newest saved step), ``finished`` (the loop ended without an error).

    Step metrics stay on the device until :meth:`flush` pulls them (at log steps, every
    :data:`FLUSH_EVERY` steps, and before evaluating or saving), so the host does not wait on every step.
    """

    def __init__(self, setup: Setup, state: TrainState, hooks: Sequence[Any] = ()):
        self.setup = setup
        self.state = state
        self.hooks = list(hooks)
        self.step = setup.start
        self.stop = False
        self.finished = False
        self.signal: str | None = None
        self.interrupted: str | None = None
        self.last: dict = {"loss": float("nan")}
        self.eval: dict = {}
        self.last_eval: dict = {}
        self.first_eval: dict | None = None
        self.last_checkpoint: int | None = max(setup.ckpt.steps(), default=None)
        self._pending: list[tuple[int, list]] = []
        self._t0: float | None = None  # start of the tokens/s window; None until the first step is done
        self._timed_steps = 0

    def emit(self, event: str, *args: Any) -> None:
        """Call ``event`` (e.g. "on_step") on every hook that has it, in order."""
        for h in self.hooks:
            fn = getattr(h, event, None)
            if fn is not None:
                fn(self, *args)

    def log(self, row: dict) -> None:
        """Send a metrics row (with its ``step``) to every hook's ``on_log``."""
        self.emit("on_log", row)

    def plain(self) -> TrainState:
        """The current state as one (unreplicated) pytree, for evaluation and checkpoints."""
        return self.setup.par.unreplicate(self.state)

    def record(self, metrics: list[dict]) -> None:
        """Queue the device metrics of the update that made ``self.step`` (one dict per micro-batch)."""
        t = self.setup.run.train
        self._pending.append((self.step, metrics))
        self._timed_steps += 1
        if self._t0 is None:  # the first step includes compilation: time tokens/s from its end
            jax.block_until_ready(metrics[-1])
            self.flush()
        elif self.step % t.log_every == 0 or len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Pull the queued step metrics to the host; raise :class:`TrainingError` on a NaN/inf loss or
        gradient norm; log the rows of log steps and the last step (means over micro-batches, weighted by
        tokens; ``tokens_per_s`` and ``mfu`` over the steps since the last flush)."""
        if not self._pending:
            return
        s, t = self.setup, self.setup.run.train
        host = jax.device_get([ms for _, ms in self._pending])
        now = time.perf_counter()
        rate = None
        if self._t0 is not None and self._timed_steps:
            rate = self._timed_steps * s.tokens_per_step / (now - self._t0)
        for (step, _), ms in zip(self._pending, host):
            mean = _mean_metrics(ms)
            # ids outside the vocabulary cannot raise inside the jitted step: it counts them (step.py)
            bad = sum(int(np.max(m["bad_ids"])) for m in ms if "bad_ids" in m)
            if bad:
                raise TrainingError(
                    f"{bad} token ids outside [0, model.vocab_size={s.run.model.vocab_size}) in the batch of step "
                    f"{step}: training stopped; the last good checkpoint is "
                    f"{'none' if self.last_checkpoint is None else f'step {self.last_checkpoint}'}, not replaced. "
                    f"The data was tokenized with another tokenizer: re-tokenize it with the run's tokenizer or "
                    f"raise model.vocab_size.")
            if not math.isfinite(mean["loss"]) or not math.isfinite(mean["grad_norm"]):
                saved = "none (nothing saved)" if self.last_checkpoint is None else \
                    f"step {self.last_checkpoint} in {s.ckpt.dir}"
                raise TrainingError(
                    f"loss is {mean['loss']} (grad norm {mean['grad_norm']}) at step {step}: training "
                    f"stopped. The last good checkpoint is {saved}; it was not replaced. Lower train.lr, set "
                    f"train.clip_norm, or check the data.")
            if step % t.log_every == 0 or step == t.steps:
                row = {"step": step, **mean, "ppl": M.perplexity(mean["nll"]),
                       "lr": learning_rate(t, s.run.model, step - 1)}
                if rate is not None:
                    row["tokens_per_s"] = rate
                    row["mfu"] = s.flops_per_token * rate / s.peak_flops
                self.log(row)
                self.last = row
        self._pending.clear()
        self._t0, self._timed_steps = now, 0

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Work kept out of the tokens/s window (evaluating, saving): flushes first, restarts the window
        after."""
        self.flush()
        try:
            yield
        finally:
            self._t0, self._timed_steps = time.perf_counter(), 0


def _mean_metrics(ms: list[dict]) -> dict:
    """One step's metrics from its micro-batches': token-weighted loss, nll, accuracy; mean grad norm."""
    w = np.array([float(m["tokens"]) for m in ms])
    mean = {k: float(np.average([float(m[k]) for m in ms], weights=w if w.sum() > 0 else None))
            for k in ("loss", "nll", "accuracy")}
    # further task metrics (a mixture-of-experts model's moe_*): token-weighted too
    for k in ms[0]:
        if k.startswith("moe_"):
            mean[k] = float(np.average([float(m[k]) for m in ms], weights=w if w.sum() > 0 else None))
    mean["grad_norm"] = float(np.mean([float(m["grad_norm"]) for m in ms]))
    mean["tokens"] = float(w.sum())
    # task-specific means (e.g. DPO's chosen / rejected rewards and their margin), weighted the same way
    for k in sorted(set(ms[0]) - set(mean) - {"bad_ids"}):
        mean[k] = float(np.average([float(m[k]) for m in ms], weights=w if w.sum() > 0 else None))
    return mean


def evaluate(eval_fn, params: dict, data: ArrayData, batch_size: int, max_batches: int | None,
             par: Parallel) -> dict:
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


STREAM_DIR = "stream"  # RUN_DIR/stream/<step>/<process>.json: each process's stream position (multi-process)


def save_stream_state(s: Setup, step: int) -> dict:
    """The stream position of this process after ``step`` batches. A multi-process run's processes read
    different parts of the stream: each also writes its own to ``RUN_DIR/stream/<step>/<process>.json``
    (the checkpoint's meta is written by process 0 only)."""
    state = s.prep.train.state_dict()
    if jax.process_count() > 1:
        import json

        from jaxlm.fileio import write_text_atomic

        d = s.run_dir / STREAM_DIR / str(step)
        d.mkdir(parents=True, exist_ok=True)
        write_text_atomic(d / f"{jax.process_index()}.json", json.dumps(state))
    return state


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


class Evaluation(Hook):
    """Evaluates on the run's eval split before training (fresh runs only: ``loop.first_eval``), every
    ``train.eval_every`` steps and at the last step (``loop.eval``, ``loop.last_eval``, logged). Does
    nothing when the run has no eval split."""

    def _evaluate(self, loop: Loop) -> dict:
        s, t = loop.setup, loop.setup.run.train
        params = s.compiled.model_params(loop.plain())  # with LoRA: the base combined with the adapters
        fn = s.compiled.eval_step(params)
        return evaluate(fn, params, s.prep.eval, t.batch_size, t.eval_batches, s.par)

    def on_start(self, loop: Loop) -> None:
        if loop.setup.prep.eval is not None and loop.setup.resumed_from is None:
            loop.first_eval = self._evaluate(loop)
            loop.setup.say("eval before training: " + _fmt(loop.first_eval))

    def on_step(self, loop: Loop) -> None:
        t = loop.setup.run.train
        due = (t.eval_every and loop.step % t.eval_every == 0) or loop.step == t.steps
        if not due or loop.setup.prep.eval is None:
            return
        with loop.untimed():
            loop.eval = loop.last_eval = self._evaluate(loop)
        loop.log({"step": loop.step, **loop.eval})
        loop.setup.say(f"step {loop.step}: " + _fmt(loop.eval))


class Checkpointing(Hook):
    """Saves the state every ``train.checkpoint_every`` steps, at the last step, at a step after which an
    earlier hook stops the run (``loop.stop``), and when SIGTERM/SIGINT arrives: the handler only records
    the signal (``loop.signal``); after the step in progress the state is saved, the save is waited for,
    and the loop stops (``loop.interrupted``). A second SIGINT raises KeyboardInterrupt at once. Handlers
    are installed from the main thread only, and restored at the end.

    The signal is looked at after this step's regular save (whose metrics fetch and save may be where it
    landed), and the stop reports only what is on disk: "saved checkpoint step N" once step N's directory
    exists after the save finished, otherwise that step N was not written, why, and the last good
    checkpoint."""

    def __init__(self) -> None:
        self._old: dict = {}
        self._loop: Loop | None = None

    def on_start(self, loop: Loop) -> None:
        self._loop = loop
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._loop.signal and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._loop.signal = signal.Signals(signum).name

    def on_step(self, loop: Loop) -> None:
        t = loop.setup.run.train
        due = (t.checkpoint_every and loop.step % t.checkpoint_every == 0) or loop.step == t.steps
        if (due or loop.stop) and not loop.signal:
            with loop.untimed():
                self.save(loop)
        if loop.signal:  # read again: it may have arrived during the save above
            self.stop(loop)

    def stop(self, loop: Loop) -> None:
        """End the run after a signal: save this step (unless saved already), wait until it is written,
        and report what is on disk."""
        s, step, sig = loop.setup, loop.step, loop.signal
        loop.interrupted, loop.stop = sig, True
        why = None
        try:
            with loop.untimed():  # the fetch checks this step's loss: a NaN state is never saved
                self.save(loop)
            s.ckpt.wait()
        except TrainingError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure means the step was not written; say so and stop
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        saved = why is None and (s.ckpt.dir / str(step)).is_dir()
        on_disk = [int(p.name) for p in s.ckpt.dir.iterdir() if p.name.isdigit()] if s.ckpt.dir.is_dir() else []
        loop.last_checkpoint = max(on_disk, default=None)
        if saved:
            s.say(f"{sig} received: saved checkpoint step {step} in {s.ckpt.dir}; rerun the same command to "
                  f"resume.")
            return
        last = ("there is none: rerunning starts over" if loop.last_checkpoint is None else
                f"step {loop.last_checkpoint}: rerunning the same command resumes from it")
        s.say(f"{sig} received: checkpoint step {step} was NOT written ({why or 'it is not on disk'}); the "
              f"last good checkpoint is {last}.")

    def save(self, loop: Loop) -> None:
        """Save the current state with its data position, last train loss and this step's eval metrics
        (which also rank it for ``train.best_metric``)."""
        s, t, step = loop.setup, loop.setup.run.train, loop.step
        meta = {"data_position": {"step": step, "seed": t.seed, "batch_size": t.batch_size,
                                  "epoch": s.prep.train.position(step, t.batch_size)[0]},
                "loss": loop.last.get("loss"), **loop.eval}
        if hasattr(s.prep.train, "state_dict"):  # a data stream: its position (jaxlm.data.stream)
            meta["stream"] = save_stream_state(s, step)
        if s.ckpt.save(step, loop.plain(), meta, loop.eval):
            loop.last_checkpoint = step

    def on_end(self, loop: Loop) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old.clear()
