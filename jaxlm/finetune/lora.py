"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") as a parameter transform.

A frozen projection ``W [*in, *out]`` becomes ``W + (alpha / r) · A · B`` with ``A [*in, r]`` and
``B [r, *out]``; B starts at zero, so the adapted model starts as the base model. Nothing in the model
changes: :func:`combine` returns the base params with ``lora_a`` / ``lora_b`` entries added next to each
adapted ``w``, and :func:`jaxlm.nn.linear.apply` adds ``((x @ A) @ B)`` to ``x @ W`` — two thin einsums, the
full-rank delta is never formed on the forward or backward pass. The adapters are their own params tree
(``{"layers": {"attn": {"q": {"lora_a", "lora_b"}}}}``), so the partition into trainable and frozen is the
tree itself: the optimizer and the checkpoints see only the adapters; :func:`merge` folds them into the base
weights for export or fast inference.

Adapters are declared as :class:`jaxlm.params.Param` with logical axes (``A``: the weight's input axes plus
an unsharded rank axis; ``B``: the rank axis plus the weight's output axes), so they shard by the same rules
as the weights they adapt.

QLoRA (Dettmers et al. 2023): the base may hold quantized weights (:class:`jaxlm.nn.quant.QArray`, int8 or
int4); :func:`combine` leaves them quantized and :func:`jaxlm.nn.linear.apply` contracts them as stored (any
dequantisation happens inside the jitted step, per use), so the base is never copied to float.

Deviations: none from the paper's method; the rank axis is never sharded. A's init is PEFT's default
(Kaiming-uniform with a = sqrt(5): uniform in ±1/sqrt(fan_in)).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import params as P
from jaxlm.config import ConfigError
from jaxlm.models import family_of
from jaxlm.nn import quant

ADAPTER_KEYS = ("lora_a", "lora_b")
NOT_ADAPTABLE = ("lm_head",)  # read directly (not through jaxlm.nn.linear.apply), so an adapter would be ignored


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Which weights get adapters and their shape. ``targets``: regular expressions over the path of a
    projection (``layers/attn/q``; the trailing ``/w`` may be included), each matched in full against the path
    or a suffix of it after a ``/`` (so ``layers/attn/q`` also adapts ``decoder/layers/attn/q``).
    ``rank`` r, ``alpha`` (the update is scaled by ``alpha / r``), ``dropout`` on the adapters' input."""

    targets: tuple[str, ...] = ("layers/attn/(q|v)",)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(t for t in self.targets.split(",") if t))
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets:
            raise ConfigError("finetune.lora.targets is empty; name the projections to adapt, e.g. "
                              "'layers/attn/(q|v)'.")
        for t in self.targets:
            try:
                re.compile(t)
            except re.error as e:
                raise ConfigError(f"finetune.lora.targets: {t!r} is not a regular expression ({e}).") from None
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ConfigError(f"finetune.lora.rank={self.rank!r} must be a positive integer (e.g. 8).")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"finetune.lora.alpha={self.alpha!r} must be a finite number > 0 (e.g. 16).")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"finetune.lora.dropout={self.dropout!r} must be in [0, 1) (e.g. 0.05; 0 = off).")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def is_adapter(path: str) -> bool:
    """Whether a flattened params path (``layers/attn/q/lora_a``) is a LoRA adapter matrix."""
    return path.rsplit("/", 1)[-1] in ADAPTER_KEYS


def _model_spec(model) -> Mapping:
    """A model Config -> its spec; a spec passes through."""
    return family_of(model).spec(model) if not isinstance(model, Mapping) else model


def _split(param: P.Param) -> tuple[int, int]:
    """(leading ``layers`` dims, input dims) of a projection weight ``[*layers, *in, *out]``. Inputs are one
    dim, except a projection onto the model width from several dims (attention's ``o``: [H, K] -> D)."""
    lead = 0
    while lead < len(param.axes) and param.axes[lead] == "layers":
        lead += 1
    axes = param.axes[lead:]
    n_in = len(axes) - 1 if (len(axes) > 2 and axes[-1] == "embed" and axes[0] != "embed") else 1
    return lead, n_in


def candidates(model) -> dict[str, P.Param]:
    """``{projection path: weight Param}`` of every weight LoRA can adapt: the ``w`` of a
    :func:`jaxlm.nn.linear.spec` (at least 2 dims besides the layers axis), except the output head."""
    out = {}
    for k, p in P.flatten(_model_spec(model)).items():
        parts = k.split("/")
        if parts[-1] == "w" and len(parts) > 1 and parts[0] not in NOT_ADAPTABLE:
            lead, _ = _split(p)
            if len(p.shape) - lead >= 2:
                out["/".join(parts[:-1])] = p
    return out


def _matches(pattern: str, path: str) -> bool:
    pattern = pattern[:-2] if pattern.endswith("/w") else pattern
    return re.fullmatch(f"(?:.*/)?(?:{pattern})", path) is not None


def targets(model, cfg: LoRAConfig) -> list[str]:
    """The projection paths ``cfg.targets`` select in ``model`` (a Config or spec), sorted. A pattern that
    selects nothing is an error listing the paths that exist."""
    cands = candidates(model)
    out = set()
    for t in cfg.targets:
        hit = [k for k in cands if _matches(t, k)]
        if not hit:
            raise ConfigError(f"finetune.lora.targets: {t!r} matches no projection; the adaptable paths are "
                              f"{sorted(cands)} (the output head and embeddings cannot take an adapter).")
        out.update(hit)
    return sorted(out)


def _a_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def spec(model, cfg: LoRAConfig) -> dict:
    """The adapters' spec: for each target ``PATH`` (weight ``[*layers, *in, *out]``), ``PATH/lora_a``
    ``[*layers, *in, r]`` (the weight's input axes + an unsharded rank axis, PEFT's Kaiming-uniform init) and
    ``PATH/lora_b`` ``[*layers, r, *out]`` (zeros), in the weight's dtype. Rank above the weight's smaller
    side (its input or output size) is an error."""
    cands = candidates(model)
    flat = {}
    for path in targets(model, cfg):
        w = cands[path]
        lead, n_in = _split(w)
        ls, la = w.shape[:lead], w.axes[:lead]
        ins, ina = w.shape[lead:lead + n_in], w.axes[lead:lead + n_in]
        outs, outa = w.shape[lead + n_in:], w.axes[lead + n_in:]
        d_in, d_out = math.prod(ins), math.prod(outs)
        if cfg.rank > min(d_in, d_out):
            raise ConfigError(f"finetune.lora.rank={cfg.rank} exceeds the smaller dimension of {path} "
                              f"({d_in} -> {d_out}); choose a rank <= {min(d_in, d_out)}.")
        flat[f"{path}/lora_a"] = P.Param((*ls, *ins, cfg.rank), (*la, *ina, None), _a_init(d_in), w.dtype)
        flat[f"{path}/lora_b"] = P.Param((*ls, cfg.rank, *outs), (*la, None, *outa), P.zeros, w.dtype)
    return P.unflatten(flat)


def init(key: jax.Array, model, cfg: LoRAConfig, mesh=None) -> dict:
    """Fresh adapters (B = 0), born sharded over ``mesh`` when given."""
    from jaxlm import sharding

    return sharding.init(key, spec(model, cfg), mesh)


def combine(base: Mapping, adapters: Mapping, cfg: LoRAConfig, key: jax.Array | None = None) -> dict:
    """The params tree the model's ``apply`` runs with the adapters: ``base`` plus, next to each adapted
    ``w``, ``lora_a`` and ``lora_b · alpha / r``. With ``key`` and ``cfg.dropout > 0`` each adapted projection
    also gets a dropout key (one per layer of a stack) and rate. Differentiable in ``adapters``.

    Entries of ``adapters`` that are not ``lora_a`` / ``lora_b`` (parameters a fine-tuning run trains in full,
    such as a new task head) replace or add to ``base``'s as they are."""
    fb, fa = P.flatten(base), P.flatten(adapters)
    fb.update({k: v for k, v in fa.items() if not is_adapter(k)})
    fa = {k: v for k, v in fa.items() if is_adapter(k)}
    missing = sorted({k.rsplit("/", 1)[0] for k in fa} - {k.rsplit("/", 1)[0] for k in fb if k.endswith("/w")})
    if missing:
        raise ValueError(f"adapters for {missing} have no weight in the base params: adapters and model differ.")
    out = dict(fb)
    for k, v in fa.items():
        out[k] = v * jnp.asarray(cfg.scale, v.dtype) if k.endswith("/lora_b") else v
    if key is not None and cfg.dropout > 0:
        for i, path in enumerate(sorted({k.rsplit("/", 1)[0] for k in fa})):
            a = fa[f"{path}/lora_a"]
            lead = a.ndim + fa[f"{path}/lora_b"].ndim - 2 - fb[f"{path}/w"].ndim
            n = math.prod(a.shape[:lead])
            keys = jax.random.split(jax.random.fold_in(key, i), n)
            out[f"{path}/lora_key"] = jax.random.key_data(keys).reshape(*a.shape[:lead], -1)
            out[f"{path}/lora_rate"] = jnp.full(a.shape[:lead], cfg.dropout, jnp.float32)
    return P.unflatten(out)


def merge(base: Mapping, adapters: Mapping, cfg: LoRAConfig) -> dict:
    """``base`` with every adapted weight replaced by ``W + (alpha / r) · A · B`` (in W's dtype): a plain
    params tree for export, conversion or decoding at the base model's speed. A quantized ``W``
    (:class:`jaxlm.nn.quant.QArray`, QLoRA) is dequantised and the merged weight is float; quantize the
    result again with :func:`jaxlm.nn.quant.quantize` to keep the base's size. Non-adapter entries of
    ``adapters`` (fully trained parameters) replace or add to ``base``'s, as in :func:`combine`."""
    fb, fa = P.flatten(base), P.flatten(adapters)
    fb.update({k: v for k, v in fa.items() if not is_adapter(k)})
    fa = {k: v for k, v in fa.items() if is_adapter(k)}
    out = dict(fb)
    for path in sorted({k.rsplit("/", 1)[0] for k in fa}):
        w, a, b = fb[f"{path}/w"], fa[f"{path}/lora_a"], fa[f"{path}/lora_b"]
        if isinstance(w, quant.QArray):  # QLoRA: the merged weight is float (re-quantize it if wanted)
            w = w.dequantize(w.dtype)
        lead = a.ndim + b.ndim - 2 - w.ndim
        ls = a.shape[:lead]
        a2 = jnp.asarray(a, jnp.float32).reshape(*ls, -1, a.shape[-1])  # [*layers, in, r]
        b2 = jnp.asarray(b, jnp.float32).reshape(*ls, b.shape[lead], -1)  # [*layers, r, out]
        delta = jnp.einsum("...ir,...ro->...io", a2, b2).reshape(w.shape) * cfg.scale
        out[f"{path}/w"] = (jnp.asarray(w, jnp.float32) + delta).astype(w.dtype)
    return P.unflatten(out)


def tree_bytes(tree) -> int:
    """Bytes of every array leaf of ``tree`` (arrays or ``ShapeDtypeStruct``; e.g. an optimizer state from
    ``jax.eval_shape(opt.init, params)``)."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "shape") and hasattr(x, "dtype")))


def make_train_step(task, model_cfg, cfg: LoRAConfig, optimizer):
    """``step(adapters, opt_state, base, batch, key) -> (adapters, opt_state, metrics)``: one optimizer
    update of the adapters only, pure and un-jitted (jit it with ``base`` as an argument, not a closure, so
    the frozen weights are not baked into the program). ``task`` is a :class:`jaxlm.train.tasks.Task`-like
    callable ``task(params, batch, key, model_cfg, train) -> sums`` (``loss``, ``weight``, ...); the
    objective is ``sum(loss) / sum(weight)``. The base gets no gradient: only the adapters are arguments of
    the differentiated function. Metrics: ``loss`` and ``grad_norm`` (plus the task's sums)."""
    import optax

    def objective(adapters, base, batch, key):
        k_drop, k_task = (None, None) if key is None else jax.random.split(key)
        sums = task(combine(base, adapters, cfg, k_drop), batch, k_task, model_cfg, True)
        return sums["loss"] / jnp.maximum(sums["weight"], 1e-9), sums

    def step(adapters, opt_state, base, batch, key):
        (obj, sums), grads = jax.value_and_grad(objective, has_aux=True)(adapters, base, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, adapters)
        adapters = optax.apply_updates(adapters, updates)
        return adapters, opt_state, dict(sums) | {"loss": obj, "grad_norm": optax.tree.norm(grads)}

    return step
