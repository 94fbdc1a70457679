"""The configs of a training run: ``RunConfig(model, train, data, mesh)``.

An experiment file defines ``config() -> RunConfig``. ``jaxlm train EXPERIMENT.py key=value ...`` applies
typed overrides with :func:`apply_overrides` (``train.lr=3e-4``, ``data.path=...``, ``mesh.fsdp=4``,
``model.preset=gpt2-tiny`` swaps the model for a preset, then ``model.<field>=...`` changes its fields).
Unknown keys raise a ConfigError naming the closest valid key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import numbers
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxlm import config as C
from jaxlm.config import parse_step
from jaxlm.fileio import write_text_atomic
from jaxlm.finetune.lora import LoRAConfig
from jaxlm.models import FAMILIES, base, family_of, get

# the training tasks a family may declare, plus post-training tasks that need one of them (their data is
# built by jaxlm.data.chat / jaxlm.data.preference, their losses by jaxlm.train.tasks)
FINETUNE_TASKS = {"sft": "causal_lm", "dpo": "causal_lm"}
TASKS = base.TASKS + tuple(FINETUNE_TASKS)
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "noam")


def _check_number(key: str, v: Any, ok: bool, domain: str, fix: str) -> None:
    """Raise a ConfigError naming ``key``, its value, the domain and the fix unless ``ok`` (a NaN or inf
    fails every domain: the comparisons are made by the caller with :func:`_finite`)."""
    if not ok:
        raise C.ConfigError(f"{key}={v!r} must be {domain}; {fix}.")


def _integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, kw_only=True)
class WandbConfig:
    """Weights & Biases logging (the optional ``wandb`` extra): off while ``project`` is empty. The run's
    W&B id is kept in ``RUN_DIR/wandb_id.txt`` so a resumed run continues the same W&B run. ``mode``:
    "" (wandb's default / ``$WANDB_MODE``), "online", "offline" or "disabled"."""

    project: str = ""
    entity: str = ""
    name: str = ""  # "" = the run directory's name
    mode: str = ""

    def __post_init__(self) -> None:
        C.check_choice("train.wandb.mode", self.mode, ("", "online", "offline", "disabled"))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation, loop cadence and checkpointing. ``steps`` counts optimizer updates; each update sees
    ``batch_size`` examples, split into ``grad_accum`` micro-batches."""

    task: str = "causal_lm"
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    seed: int = 0
    # optimizer
    optimizer: str = "adamw"
    lr: float = 3e-4  # peak rate; for schedule="noam" a multiplier of d_model^-0.5 * min(...)
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine: final rate = lr * min_lr_ratio
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01  # AdamW only; never applied to biases and norm parameters
    clip_norm: float | None = 1.0  # global-norm clipping; None = off
    # loss
    label_smoothing: float = 0.0
    z_loss: float = 0.0  # coefficient of the log-partition penalty (PaLM); 0 = off
    mlm_prob: float = 0.15
    dpo_beta: float = 0.1  # dpo: strength of the implicit KL penalty toward the reference (the initial model)
    # loop
    log_every: int = 10
    eval_every: int = 200  # 0 = only at the end
    eval_batches: int = 20
    checkpoint_every: int = 500  # 0 = only at the end / on a signal
    keep_checkpoints: int = 3
    best_metric: str = "eval_loss"  # also keep the best checkpoint by this metric ("" = off)
    best_mode: str = "min"
    async_checkpoint: bool = True
    init_from: str = ""  # a run directory whose params start this run (fine-tuning); heads absent there are new
    init_step: str = "latest"  # init_from's checkpoint: a step number, "best" (its best_metric) or "latest"
    peak_flops: float | None = None  # per-device peak FLOP/s for the MFU estimate (None = a table by device)
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True
    dropout: bool = True  # False trains without dropout (key=None)
    # resuming from a checkpoint whose optimizer state does not fit this run's optimizer (changed clip_norm,
    # grad_accum, optimizer, ...): True restores the params and step only and starts the optimizer state
    # (moments, schedule count) afresh; False refuses with the changed settings named
    reset_optimizer: bool = False
    wandb: WandbConfig = field(default_factory=WandbConfig)  # train.wandb.project=NAME logs to W&B too

    def __post_init__(self) -> None:
        C.check_choice("train.task", self.task, TASKS)
        C.check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        C.check_choice("train.schedule", self.schedule, SCHEDULES)
        C.check_choice("train.best_mode", self.best_mode, ("min", "max"))
        n = _check_number
        for f, example in (("steps", 1000), ("batch_size", 16), ("grad_accum", 1), ("log_every", 10),
                           ("eval_batches", 20), ("keep_checkpoints", 3)):
            v = getattr(self, f)
            n(f"train.{f}", v, _integer(v) and v > 0, "a positive integer", f"e.g. train.{f}={example}")
        for f, example in (("warmup_steps", 100), ("eval_every", 200), ("checkpoint_every", 500)):
            v = getattr(self, f)
            n(f"train.{f}", v, _integer(v) and v >= 0, "an integer >= 0", f"e.g. train.{f}={example}"
              + ("" if f == "warmup_steps" else " (0 = only at the end)"))
        n("train.seed", self.seed, _integer(self.seed) and self.seed >= 0, "an integer >= 0",
          "pick any non-negative seed (e.g. 0)")
        n("train.lr", self.lr, _finite(self.lr) and self.lr > 0, "a finite number > 0", "e.g. train.lr=3e-4")
        n("train.min_lr_ratio", self.min_lr_ratio, _finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
          "in [0, 1]", "it is the final learning rate as a fraction of train.lr (e.g. 0.1)")
        for f in ("b1", "b2"):
            v = getattr(self, f)
            n(f"train.{f}", v, _finite(v) and 0 <= v < 1, "in [0, 1)", "Adam's decay rates are e.g. b1=0.9, "
              "b2=0.999")
        n("train.eps", self.eps, _finite(self.eps) and self.eps > 0, "a finite number > 0", "e.g. train.eps=1e-8")
        n("train.weight_decay", self.weight_decay, _finite(self.weight_decay) and self.weight_decay >= 0,
          "a finite number >= 0", "0 turns weight decay off (e.g. 0.01)")
        # 0 and None both mean no clipping (optim skips a falsy clip_norm); a negative norm would flip the sign
        # of every update
        n("train.clip_norm", self.clip_norm, self.clip_norm is None
          or (_finite(self.clip_norm) and self.clip_norm >= 0), "a finite number > 0, or none / 0 for no "
          "clipping", "e.g. train.clip_norm=1.0")
        n("train.z_loss", self.z_loss, _finite(self.z_loss) and self.z_loss >= 0, "a finite number >= 0",
          "0 turns the z-loss off (PaLM uses 1e-4)")
        n("train.peak_flops", self.peak_flops, self.peak_flops is None
          or (_finite(self.peak_flops) and self.peak_flops > 0), "a finite number > 0 or none",
          "give the device's peak FLOP/s (e.g. 9.9e14) or none to look it up")
        if self.batch_size % self.grad_accum:
            raise C.ConfigError(f"train.batch_size={self.batch_size} is not divisible by train.grad_accum="
                                f"{self.grad_accum}; each update splits the batch into grad_accum micro-batches.")
        if not 0 <= self.label_smoothing < 1:
            raise C.ConfigError(f"train.label_smoothing={self.label_smoothing} must be in [0, 1) (e.g. 0.1; "
                                f"0 = off).")
        n("train.dpo_beta", self.dpo_beta, _finite(self.dpo_beta) and self.dpo_beta > 0, "a finite number > 0",
          "DPO papers use 0.1 to 0.5")
        if not 0 < self.mlm_prob < 1:
            raise C.ConfigError(f"train.mlm_prob={self.mlm_prob} must be in (0, 1) (BERT masks 0.15).")
        try:
            parse_step(self.init_step)
        except ArgumentTypeError:
            raise C.ConfigError(f"train.init_step={self.init_step!r} must be a step number, 'best' or 'latest'.") \
                from None
        if self.schedule == "noam" and self.warmup_steps == 0:
            raise C.ConfigError("train.schedule='noam' needs train.warmup_steps > 0 (the paper uses 4000).")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the data is and how it becomes arrays. See :mod:`jaxlm.data`."""

    path: str = ""  # file, directory (+ glob), comma-separated list, or hub dataset name
    eval_path: str = ""  # "" = hold out eval_fraction of the training data
    glob: str = "*"  # files of a directory path; "**/*.py" recurses
    format: str = "auto"  # auto | text | json | csv | tsv | parquet | hub
    sample_by: str = "document"  # text files: one row per document | paragraph | line
    text_column: str = "text"
    target_path: str = ""  # seq2seq from two line-aligned text files: path = source, target_path = target
    eval_target_path: str = ""
    source_column: str = "source"  # seq2seq from one table
    target_column: str = "target"
    label_column: str = "label"  # classification
    query_column: str = "query"  # span extraction
    answer_column: str = "answer"
    messages_column: str = "messages"  # sft: one conversation per row, [{"role", "content"}, ...]
    prompt_column: str = "prompt"  # dpo: (prompt, chosen, rejected) texts
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    chat_template: str = ""  # sft: a .jinja file or checkpoint directory; "" = next to data.tokenizer
    tokenizer: str = "bpe"  # char | bpe (trained on the training split) | path of a pretrained tokenizer
    vocab_size: int | None = None  # BPE size; None = model.vocab_size
    seq_len: int = 128  # tokens per example (source length for seq2seq)
    target_len: int | None = None  # seq2seq target length; None = seq_len
    eval_fraction: float = 0.05
    max_examples: int | None = None  # read at most this many rows (quick runs)
    max_eval_examples: int | None = None
    # hub datasets (path = a hub id such as "nyu-mll/glue"): its config ("sst2"), the training split, and the
    # split evaluated on ("" = data.eval_path, else hold out data.eval_fraction of the training rows); all three
    # apply to hub ids only: a local data.path has one split (evaluation then uses eval_path / eval_fraction)
    hub_config: str = ""
    split: str = "train"
    eval_split: str = ""
    local: str = ""  # a local mirror of hub datasets (folder per id; jaxlm.data.hub); "" = $JAXLM_DATA
    # read the corpus as a datasets IterableDataset, tokenized and packed on the fly (causal_lm; jaxlm.data.stream)
    streaming: bool = False

    def __post_init__(self) -> None:
        C.check_choice("data.format", self.format, ("auto", "text", "json", "csv", "tsv", "parquet", "hub"))
        C.check_choice("data.sample_by", self.sample_by, ("document", "paragraph", "line"))
        if not 0 <= self.eval_fraction < 1:
            raise C.ConfigError(f"data.eval_fraction={self.eval_fraction} must be in [0, 1) (e.g. 0.05; 0 = no "
                                f"eval split unless data.eval_path is set).")
        for f, example in (("seq_len", 128), ("target_len", 128), ("vocab_size", 8192), ("max_examples", 1000),
                           ("max_eval_examples", 100)):
            v = getattr(self, f)
            _check_number(f"data.{f}", v, (v is None and f != "seq_len") or (_integer(v) and v > 0),
                          "a positive integer" + ("" if f == "seq_len" else " or none"), f"e.g. data.{f}={example}")


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Device mesh ``(data, fsdp, tensor, context)`` and the parallel mode (``jit`` with shardings, or
    ``pmap``). ``context`` shards the sequence dimension of activations (context parallelism for long
    sequences, :mod:`jaxlm.nn.ring`); it must divide ``data.seq_len``."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    parallel: str = "jit"
    context: int = 1

    def __post_init__(self) -> None:
        C.check_choice("mesh.parallel", self.parallel, ("jit", "pmap"))
        for f in ("data", "fsdp", "tensor", "context"):
            v = getattr(self, f)
            if not _integer(v) or (v != -1 and v < 1):
                raise C.ConfigError(f"mesh.{f}={v!r} must be an integer >= 1 (or -1: use the remaining devices).")


@dataclass(frozen=True, kw_only=True)
class LoRASettings:
    """``finetune.lora.*``: train LoRA adapters (:mod:`jaxlm.finetune.lora`) instead of the model's weights;
    off while ``rank`` is 0. The base model is ``train.init_from``'s params (a fresh init without it) and stays
    frozen; checkpoints hold the adapters and their optimizer state only. ``targets``: regular expressions
    over projection paths (comma-separated on the command line), ``alpha``: the update is scaled by
    ``alpha / rank``, ``dropout``: on the adapters' input. ``quantize``: QLoRA (Dettmers et al. 2023): the
    frozen base's matmul weights held as int8 (per output channel) or int4 (``quant_group`` values per
    scale; 0 = 128, or for a weight whose input size is not a multiple of 128 the largest even size below
    that divides it) by :func:`jaxlm.nn.quant.quantize`, never as a float copy; "" keeps the base float."""

    rank: int = 0
    targets: str = "layers/attn/(q|v)"  # comma-separated regular expressions
    alpha: float = 16.0
    dropout: float = 0.0
    quantize: str = ""
    quant_group: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.targets, str):  # a sequence of patterns from Python
            object.__setattr__(self, "targets", ",".join(self.targets))
        if not _integer(self.rank) or self.rank < 0:
            raise C.ConfigError(f"finetune.lora.rank={self.rank!r} must be a positive integer (e.g. 8; 0 = off).")
        C.check_choice("finetune.lora.quantize", self.quantize, ("", "int8", "int4"))
        if not _integer(self.quant_group) or self.quant_group < 0 or (self.quant_group and self.quant_group % 2):
            raise C.ConfigError(f"finetune.lora.quant_group={self.quant_group!r} must be an even integer >= 2 "
                                f"(e.g. 64; 0 = the default: 128 for int4, less where 128 does not divide a "
                                f"weight's input).")
        # LoRAConfig checks every field, naming the finetune.lora key (also while off: a bad value is an error)
        LoRAConfig(targets=self._patterns(), rank=self.rank or 1, alpha=self.alpha, dropout=self.dropout)

    def _patterns(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.targets.split(",") if t.strip())

    @property
    def enabled(self) -> bool:
        return self.rank != 0

    def config(self) -> LoRAConfig:
        """The :class:`jaxlm.finetune.lora.LoRAConfig` of these settings."""
        return LoRAConfig(targets=self._patterns(), rank=self.rank, alpha=self.alpha, dropout=self.dropout)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Parameter-efficient fine-tuning: ``finetune.lora.*`` (:class:`LoRASettings`)."""

    lora: LoRASettings = field(default_factory=LoRASettings)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """model (a family Config, or a preset name resolved here), train, data, mesh, finetune."""

    model: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            object.__setattr__(self, "model", get(self.model)[1])
        if not isinstance(self.model, base.ModelConfig):
            raise C.ConfigError(f"RunConfig.model must be a model Config or a preset name, got {self.model!r}.")

    def replace(self, **kw: Any) -> RunConfig:
        return dataclasses.replace(self, **kw)


def _preset(name: str):
    try:
        return get(name)[1]
    except KeyError as e:
        raise C.ConfigError(str(e).strip('"')) from None


def apply_overrides(cfg: RunConfig, assignments: list[str] | dict[str, str]) -> RunConfig:
    """``cfg`` with ``section.field=value`` assignments applied, typed from the dataclass annotations.

    ``model.preset=NAME`` is applied first (it replaces the whole model config), so
    ``model.preset=gpt2-tiny model.n_layers=4`` means "gpt2-tiny with 4 layers" in any order.
    """
    if not isinstance(assignments, dict):
        pairs = {}
        for a in assignments:
            if "=" not in a:
                raise C.ConfigError(f"override {a!r} is not of the form key=value (e.g. train.lr=3e-4).")
            k, v = a.split("=", 1)
            pairs[k.strip()] = v.strip()
        assignments = pairs
    assignments = dict(assignments)
    if "model.preset" in assignments:
        cfg = cfg.replace(model=_preset(assignments.pop("model.preset")))
    for key, value in assignments.items():
        parts = key.split(".")
        if parts[0] == "model" and len(parts) == 2:
            fields = C.field_types(cfg.model)
            if parts[1] not in fields:
                raise C.ConfigError(f"unknown config key {key!r}{C.closest(parts[1], [*fields, 'preset'])}; "
                                    f"model keys: preset, {', '.join(sorted(fields))}.")
            try:
                cfg = cfg.replace(model=C.override(cfg.model, {parts[1]: value}))
            except C.ConfigError as e:
                raise C.ConfigError(str(e).replace(repr(parts[1]), repr(key), 1)) from None
        else:
            cfg = C.override(cfg, {key: value})
    return cfg


def resolve(cfg: RunConfig) -> RunConfig:
    """Check that the model's family supports ``train.task`` (its ``TASKS``), let the family adapt the model
    to the task (its optional ``for_task(cfg, task)``, e.g. the one head an encoder needs) and check that
    the data's lengths fit a learned position table."""
    m, t, d = cfg.model, cfg.train, cfg.data
    fam = family_of(m)
    need = FINETUNE_TASKS.get(t.task, t.task)
    if need != t.task and need not in fam.TASKS:
        able = [name for name, mod in FAMILIES.items() if need in mod.TASKS]
        raise C.ConfigError(f"train.task={t.task!r} trains a {need} model ({' or '.join(able)}), but model is "
                            f"{type(m).family}; set model.preset to a {able[0]} preset (see `jaxlm models`).")
    if need == t.task and t.task not in fam.TASKS:
        able = [name for name, mod in FAMILIES.items() if t.task in mod.TASKS]
        if not able:
            raise C.ConfigError(f"train.task={t.task!r}: no model family supports it (see `jaxlm models`).")
        raise C.ConfigError(f"train.task={t.task!r} needs a {' or '.join(able)} model (the families that "
                            f"support it), but model is {type(m).family}, whose tasks are "
                            f"{', '.join(fam.TASKS)}; set train.task to one of them, or model.preset to a "
                            f"{able[0]} preset (see `jaxlm models`).")
    for_task = getattr(fam, "for_task", None)
    if for_task is not None:
        m = for_task(m, t.task)
    if m.pos_emb == "learned":
        for f, v in (("data.seq_len", d.seq_len), ("data.target_len", d.target_len)):
            if v is not None and v > m.max_len:
                raise C.ConfigError(f"{f}={v} exceeds model.max_len={m.max_len}; lower {f} or raise "
                                    f"model.max_len.")
    return cfg.replace(model=m)


def load_experiment(path: str | Path) -> RunConfig:
    """Import an experiment file and call its ``config()`` (``FILE.py:NAME`` calls ``NAME()`` instead, for
    files that hold several stages, e.g. ``experiments/bert_sentiment.py:finetune``)."""
    fn = "config"
    if ":" in str(path) and not Path(path).is_file():
        path, fn = str(path).rsplit(":", 1)
    p = Path(path)
    if not p.is_file():
        raise C.ConfigError(f"experiment file {p} does not exist; give a path such as experiments/demo.py.")
    spec = importlib.util.spec_from_file_location(f"jaxlm_experiment_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not callable(getattr(mod, fn, None)):
        names = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n))]
        raise C.ConfigError(f"{p} defines no `{fn}()` function returning a RunConfig{C.closest(fn, names)}.")
    cfg = getattr(mod, fn)()
    if not isinstance(cfg, RunConfig):
        raise C.ConfigError(f"{p}: {fn}() returned {type(cfg).__name__}, expected a RunConfig.")
    return cfg


SECTIONS = ("model", "train", "data", "mesh", "finetune")


def to_json(cfg: RunConfig) -> dict:
    """``{"model": ..., "train": ..., "data": ..., "mesh": ..., "finetune": ...}``, each with its
    ``__class__`` tag."""
    return {k: C.to_dict(getattr(cfg, k)) for k in SECTIONS}


def from_json(d: dict) -> RunConfig:
    """The RunConfig of a :func:`to_json` dict (a run saved before ``finetune`` existed gets its default)."""
    return RunConfig(**{k: C.from_dict(d[k]) for k in SECTIONS if k in d})


def save(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as JSON (:func:`to_json`) to ``path``, atomically."""
    write_text_atomic(path, json.dumps(to_json(cfg), indent=2, sort_keys=True) + "\n")


def load(path: str | Path) -> RunConfig:
    """The RunConfig saved at ``path`` (a run's config.json)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: not a jaxlm run directory?")
    return from_json(json.loads(p.read_text()))
