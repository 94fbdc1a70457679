"""A routed mixture-of-experts feed-forward layer (Shazeer et al. 2017; Fedus et al. 2021, Switch
Transformer; Jiang et al. 2024, Mixtral of Experts).

Each token ``x`` [D] picks ``top_k`` of ``n_experts`` feed-forward networks (each a :mod:`jaxlm.nn.ffn`
FFN of width ``d_ff``, SwiGLU in Mixtral) and sums their outputs weighted by the router::

    logits = x W_r                  # [E] router logits (float32)
    p = softmax(logits)             # [E]
    w, i = top_k(p)                 # [k] Mixtral: softmax over all experts, then renormalise over the top-k
    y = sum_j (w_j / sum w) FFN_{i_j}(x)

Two ways to send tokens to their experts (``dispatch``), equal when nothing overflows (tested):

- ``"dropless"`` (MegaBlocks, Gale et al. 2022): the N * k (token, expert) pairs are sorted by expert and
  run through grouped matmuls (:func:`jax.lax.ragged_dot`, one group per expert); no token is dropped and
  no compute is spent on padding, but the group sizes are data-dependent (fine under jit: shapes are not).
- ``"capacity"`` (GShard / Switch): every expert has ``C = ceil(capacity_factor * N * k / E)`` slots; the
  pairs are placed in order of choice rank (all first choices before second choices), then token order,
  and pairs beyond C are dropped (they contribute 0, the residual carries the token) and counted. Fixed
  shapes ``[E, C, D]``, one batched matmul per weight; ``capacity_factor >= E / k`` never drops.

Auxiliary outputs (``apply`` returns ``(y, aux)``):

- ``load`` [E]: the fraction of tokens routed to each expert (sums to k; ``f_e`` of Switch eq. 5 times k);
- ``prob`` [E]: the mean router probability of each expert (``P_e``);
- ``z_loss``: the router z-loss of ST-MoE (Zoph et al. 2022), ``mean(logsumexp(logits)^2)``;
- ``dropped``: how many (token, expert) pairs overflowed (always 0 when dropless); ``dropped_frac``: as a
  fraction of the N * k pairs.

The load-balancing loss is :func:`load_balancing_loss` ``= E * sum_e f_e P_e`` over the layers' mean
``load`` and ``prob`` — what ``transformers``' ``load_balancing_loss_func`` computes (Mixtral); the model
combines the layers and the training task adds it with the config's weight (:func:`summarize`).

Expert parallelism: expert weights carry the logical axis ``"experts"`` on their leading dimension, which
:data:`jaxlm.sharding.RULES` maps to the ``fsdp`` mesh axis: the experts are most of an MoE model's
parameters and the fsdp axis is the one that splits parameter memory, so each fsdp shard holds E / fsdp
whole experts (rather than a slice of every expert). The router stays replicated (it is [D, E], tiny, and
every token needs all of it). On a mesh the dropless dispatch runs per shard of tokens
(:func:`_dropless_dispatch`): each shard gathers one layer's experts, as FSDP does for dense weights.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxlm import sharding
from jaxlm.config import ConfigError, check_choice
from jaxlm.nn import ffn, linear
from jaxlm.params import Param

DISPATCH = ("dropless", "capacity")


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """What the mixture-of-experts layer reads. ``d_ff`` is each expert's hidden width."""

    d_model: int
    d_ff: int
    n_experts: int
    top_k: int = 2
    activation: str = "swiglu"  # one of ffn.ALL (each expert is an ffn)
    dispatch: str = "dropless"  # one of DISPATCH
    capacity_factor: float = 1.25  # "capacity" dispatch: slots per expert = ceil(cf * tokens * top_k / E)
    dtype: str = "float32"
    param_dtype: str = "float32"
    use_bias: bool = False  # the router and experts of Mixtral have none; biases are not supported
    init: str = "normal"
    init_std: float = 0.02
    out_scale: float = 1.0
    dropout: float = 0.0  # on each expert's hidden activations
    aux_loss_weight: float = 0.0  # weight of the load-balancing loss in the training objective
    router_z_loss_weight: float = 0.0  # weight of the router z-loss in the training objective

    def __post_init__(self) -> None:
        name = "MoEConfig"
        for f in ("d_model", "d_ff", "n_experts"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise ConfigError(f"{name}.{f}={v!r} must be a positive integer.")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= self.n_experts:
            raise ConfigError(f"top_k={k!r} must be an integer in [1, n_experts={self.n_experts}]: each token "
                              f"is sent to top_k of the n_experts experts (Mixtral: top_k=2 of 8).")
        cf = self.capacity_factor
        if isinstance(cf, bool) or not isinstance(cf, numbers.Real) or not (cf > 0) or math.isinf(cf):
            raise ConfigError(f"capacity_factor={cf!r} must be a finite number > 0 (slots per expert = "
                              f"ceil(capacity_factor * tokens * top_k / n_experts); 1.0-1.25 is usual, "
                              f">= n_experts / top_k = {self.n_experts / k:g} never drops a token).")
        check_choice("dispatch", self.dispatch, DISPATCH)
        check_choice("activation", self.activation, ffn.ALL)
        if self.use_bias:
            raise ConfigError("MoEConfig.use_bias=True is not supported: the router and experts have no biases "
                              "(as in Mixtral); set use_bias=False.")
        for f in ("aux_loss_weight", "router_z_loss_weight"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0 or math.isinf(v):
                raise ConfigError(f"{f}={v!r} must be a finite number >= 0 (0 = off).")

    @property
    def expert_cfg(self) -> ffn.FFNConfig:
        """One expert's FFN config."""
        return ffn.FFNConfig(d_model=self.d_model, d_ff=self.d_ff, activation=self.activation, dtype=self.dtype,
                             param_dtype=self.param_dtype, use_bias=False, init=self.init, init_std=self.init_std,
                             out_scale=self.out_scale, dropout=self.dropout)

    def capacity(self, n_tokens: int) -> int:
        """Slots per expert for ``n_tokens`` tokens in ``"capacity"`` dispatch (at most ``n_tokens``)."""
        return min(n_tokens, max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)))


def config(cfg) -> MoEConfig:
    """``cfg`` itself when it is a :class:`MoEConfig`, else its ``ffn_cfg``."""
    return cfg if isinstance(cfg, MoEConfig) else cfg.ffn_cfg


def spec(cfg) -> dict:
    """``router/w`` [D, E]; ``experts``: an :func:`jaxlm.nn.ffn.spec` tree with a leading ``experts`` axis
    (``wi_0``, ``wi_1`` [E, D, F] and ``wo`` [E, F, D] for SwiGLU)."""
    c = config(cfg)
    router = linear.spec(c, (c.d_model,), (c.n_experts,), ("embed",), (None,), bias=False)
    experts = jax.tree.map(lambda p: Param((c.n_experts, *p.shape), ("experts", *p.axes), p.init, p.dtype),
                           ffn.spec(c.expert_cfg), is_leaf=lambda x: isinstance(x, Param))
    return {"router": router, "experts": experts}


# ------------------------------------------------------------------------------------------------------------
# routing
def route(p_router: dict, x: jax.Array, cfg) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``x`` [N, D] -> (router logits [N, E] float32, top-k weights [N, k] float32 renormalised to sum to 1,
    top-k expert ids [N, k] int32). Softmax over all experts first, then top-k, then renormalise (Mixtral)."""
    c = config(cfg)
    logits = jnp.einsum("ND,DE->NE", x.astype(jnp.float32), p_router["w"].astype(jnp.float32))
    probs = jax.nn.softmax(logits, axis=-1)
    top_p, top_i = jax.lax.top_k(probs, c.top_k)  # [N, k]
    return logits, top_p / jnp.sum(top_p, axis=-1, keepdims=True), top_i.astype(jnp.int32)


def router_stats(logits: jax.Array, top_i: jax.Array, n_experts: int) -> dict:
    """``load`` [E] (fraction of the N tokens sending a copy to each expert; sums to k), ``prob`` [E] (mean
    router probability), ``z_loss`` (mean squared log-partition) from logits [N, E] and ids [N, k]."""
    n = logits.shape[0]
    counts = jnp.zeros((n_experts,), jnp.float32).at[top_i.reshape(-1)].add(1.0)
    return {"load": counts / n, "prob": jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0),
            "z_loss": jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)}


def load_balancing_loss(load: jax.Array, prob: jax.Array) -> jax.Array:
    """Switch / Mixtral load-balancing loss ``E * sum_e f_e P_e`` from ``load`` and ``prob`` [..., E]
    (leading dims, e.g. layers, are averaged first, as transformers' ``load_balancing_loss_func`` does over a
    tuple of layers). Equals 1 * k for perfectly uniform routing; grows as routing concentrates."""
    E = load.shape[-1]
    f = load.reshape(-1, E).mean(0)
    P = prob.reshape(-1, E).mean(0)
    return E * jnp.sum(f * P)


# ------------------------------------------------------------------------------------------------------------
# the experts
def _act(c: MoEConfig):
    return ffn.GATED.get(c.activation) or ffn.ACTIVATIONS[c.activation]


def _dropless(pe: dict, xs: jax.Array, group_sizes: jax.Array, c: MoEConfig, key) -> jax.Array:
    """Rows ``xs`` [M, D] sorted by expert, ``group_sizes`` [E] -> each row through its expert [M, D]."""
    dt = jnp.dtype(c.dtype)
    xs = xs.astype(dt)

    def mm(a, w):  # [M, I] x [E, I, O] -> [M, O], row block g through expert g
        return jax.lax.ragged_dot(a, w.astype(dt), group_sizes)

    if c.activation in ffn.GATED:
        h = _act(c)(mm(xs, pe["wi_0"]["w"])) * mm(xs, pe["wi_1"]["w"])  # [M, F]
    else:
        h = _act(c)(mm(xs, pe["wi"]["w"]))
    h = ffn.dropout(h, c.dropout, key)
    return mm(h, pe["wo"]["w"])  # [M, D]


def _batched(pe: dict, xb: jax.Array, c: MoEConfig, key) -> jax.Array:
    """Expert buffers ``xb`` [E, C, D] -> [E, C, D] (one batched matmul per weight)."""
    dt = jnp.dtype(c.dtype)
    xb = xb.astype(dt)
    if c.activation in ffn.GATED:
        h = _act(c)(jnp.einsum("ECD,EDF->ECF", xb, pe["wi_0"]["w"].astype(dt))) * jnp.einsum(
            "ECD,EDF->ECF", xb, pe["wi_1"]["w"].astype(dt))
    else:
        h = _act(c)(jnp.einsum("ECD,EDF->ECF", xb, pe["wi"]["w"].astype(dt)))
    h = ffn.dropout(h, c.dropout, key)
    return jnp.einsum("ECF,EFD->ECD", h, pe["wo"]["w"].astype(dt))


def _sorted_pairs(pe: dict, xf: jax.Array, w: jax.Array, idx: jax.Array, c: MoEConfig, key, *,
                  run=None) -> jax.Array:
    """Tokens ``xf`` [N, D] with top-k weights/ids [N, k] -> sum_j w_j FFN_{i_j}(x) [N, D]: the N * k
    (token, expert) pairs sorted by expert, one grouped matmul per weight (``run(pe, rows, group_sizes,
    key)``, default :func:`_dropless`), scattered back."""
    N, D = xf.shape
    k = idx.shape[-1]
    flat_e = idx.reshape(-1)  # [N * k], pair m = (token m // k, choice m % k)
    order = jnp.argsort(flat_e, stable=True)  # pairs grouped by expert
    tok = order // k
    group_sizes = jnp.zeros((c.n_experts,), jnp.int32).at[flat_e].add(1)
    if run is None:
        ys = _dropless(pe, xf[tok], group_sizes, c, key)  # [N * k, D]
    else:
        ys = run(pe, xf[tok], group_sizes, key)
    ys = ys * w.reshape(-1)[order][:, None].astype(ys.dtype)
    return jnp.zeros((N, D), ys.dtype).at[tok].add(ys)


def _names(entry) -> tuple[str, ...]:
    """The mesh axis names of one PartitionSpec entry (None, a name, or a tuple of names)."""
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _dropless_dispatch(pe: dict, x: jax.Array, w: jax.Array, idx: jax.Array, c: MoEConfig, key) -> jax.Array:
    """``x`` [B, T, D], top-k weights/ids [B, T, k] -> [B, T, D] through the experts, dropless.

    On a mesh the sort runs per shard of tokens (``jax.shard_map`` over the batch/sequence split): a sort
    over the global token dimension cannot be partitioned, so XLA would gather every device's tokens and
    run the whole batch's experts on each device (the per-device step grew with the data-parallel size).
    Each shard all-gathers one layer's experts in the compute dtype, as FSDP does for a dense layer's
    weights, and asks (a remat policy on the gathered copy) for it to be gathered again in the backward pass
    rather than kept; the transpose of the gather reduce-scatters the experts' gradients. With several
    micro-batches and ``remat="none"`` the TPU compiler hoists the gathers (the same in every micro-batch)
    out of the accumulation loop and keeps every layer's gathered copy (benchmarks/HISTORY.md, "Mixture of
    experts, counted from the buffers"); the planner counts them."""
    B, T, D = x.shape
    placed = sharding.local_spec(x, ("batch", "seq", None))
    if placed is None or all(a is None for a in placed[1]):
        return _sorted_pairs(pe, x.reshape(B * T, D), w.reshape(B * T, -1), idx.reshape(B * T, -1), c,
                             key).reshape(B, T, D)
    mesh, spec = placed
    dt = jnp.dtype(c.dtype)
    axes = {name: ("experts", *p["w"].axes) for name, p in ffn.spec(c.expert_cfg).items()}
    pe = {name: {"w": pe[name]["w"].astype(dt)} for name in axes}
    w_specs = {name: {"w": sharding.local_spec(pe[name]["w"], axes[name])[1]} for name in axes}
    split = tuple(a for s in spec for a in _names(s))

    # the experts' hidden dimension stays split over ``tensor`` (each shard computes its slice of every
    # expert's hidden units, Megatron-style, and the partial outputs are summed); the rest is gathered
    mlp = {name: [i for i, a in enumerate(axes[name]) if a == "mlp"] for name in axes}
    tp = tuple(a for i in mlp["wo"] for a in _names(w_specs["wo"]["w"][i]))

    def gather(name: str, a: jax.Array) -> jax.Array:
        for dim, names in enumerate(w_specs[name]["w"]):
            if names is not None and dim not in mlp[name]:
                a = jax.lax.all_gather(a, names, axis=dim, tiled=True)
        return a

    def experts(pe, xs, group_sizes, key):
        full = {name: {"w": gather(name, pe[name]["w"])} for name in pe}
        return _dropless(checkpoint_name(full, "moe_gathered_experts"), xs, group_sizes, c, key)

    experts = jax.checkpoint(experts, policy=jax.checkpoint_policies.save_anything_except_these_names(
        "moe_gathered_experts"))

    def local(pe, x, w, idx, key):
        b, t, _ = x.shape
        if key is not None:  # a different dropout draw per shard of tokens and of hidden units
            key = jax.random.fold_in(key, jax.lax.axis_index(split + tp))
        y = _sorted_pairs(pe, x.reshape(b * t, D), w.reshape(b * t, -1), idx.reshape(b * t, -1), c, key,
                          run=experts)
        if tp:
            y = jax.lax.psum(y, tp)
        return y.reshape(b, t, D)

    rep = jax.sharding.PartitionSpec()
    specs = (w_specs, spec, spec, spec, None if key is None else rep)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=spec)(pe, x, w, idx, key)


def apply(p: dict, x: jax.Array, cfg, *, key: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """``x`` [B, T, D] -> (y [B, T, D], aux) with aux ``load`` [E], ``prob`` [E], ``z_loss`` and
    ``dropped`` (scalars); see the module docstring."""
    c = config(cfg)
    B, T, D = x.shape
    E, k = c.n_experts, c.top_k
    xf = x.reshape(B * T, D)  # [N, D]
    N = B * T
    logits, w, idx = route(p["router"], xf, c)  # [N, E], [N, k], [N, k]
    aux = router_stats(logits, idx, E)
    if c.dispatch == "dropless":
        y = _dropless_dispatch(p["experts"], x, w.reshape(B, T, k), idx.reshape(B, T, k), c, key).reshape(N, D)
        aux["dropped"] = jnp.zeros((), jnp.int32)
        aux["dropped_frac"] = jnp.zeros((), jnp.float32)
    else:
        C = c.capacity(N)
        # pair order: choice rank first (every token's first choice before any second choice), then token
        flat_e = idx.T.reshape(-1)  # [k * N]
        onehot = jax.nn.one_hot(flat_e, E, dtype=jnp.int32)  # [k * N, E]
        slot = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)  # [k * N]: place in its expert
        keep = slot < C
        dest = jnp.where(keep, flat_e * C + slot, E * C)  # overflow -> out of range, dropped by the scatter
        tok = jnp.tile(jnp.arange(N), k)
        buf = jnp.zeros((E * C, D), x.dtype).at[dest].set(xf[tok], mode="drop")
        out = _batched(p["experts"], buf.reshape(E, C, D), c, key).reshape(E * C, D)
        ys = jnp.take(out, dest, axis=0, mode="fill", fill_value=0)  # [k * N, D]; dropped pairs -> 0
        ys = ys * (w.T.reshape(-1) * keep)[:, None].astype(ys.dtype)
        y = jnp.zeros((N, D), ys.dtype).at[tok].add(ys)
        aux["dropped"] = jnp.sum(~keep).astype(jnp.int32)
        aux["dropped_frac"] = aux["dropped"] / (N * k)
    return y.reshape(B, T, D).astype(x.dtype), aux


def summarize(stats: dict, cfg) -> dict:
    """Per-layer aux of :func:`apply` stacked over layers (``load``, ``prob`` [L, E]; ``z_loss``,
    ``dropped``, ``dropped_frac`` [L]) -> the model's: ``aux_loss`` (:func:`load_balancing_loss`), ``z_loss``
    (mean over layers), ``load`` [E] (mean over layers), ``dropped`` (total), ``dropped_frac`` (mean), and ``loss`` = ``aux_loss_weight *
    aux_loss + router_z_loss_weight * z_loss``, the term a training task adds to its objective."""
    c = config(cfg)
    aux_loss = load_balancing_loss(stats["load"], stats["prob"])
    z = jnp.mean(stats["z_loss"])
    E = stats["load"].shape[-1]
    return {"aux_loss": aux_loss, "z_loss": z, "load": stats["load"].reshape(-1, E).mean(0),
            "dropped": jnp.sum(stats["dropped"]), "dropped_frac": jnp.mean(stats["dropped_frac"]), "loss": c.aux_loss_weight * aux_loss + c.router_z_loss_weight * z}


def active_fraction(cfg) -> float:
    """The fraction of expert parameters a token uses: top_k / n_experts."""
    c = config(cfg)
    return c.top_k / c.n_experts
