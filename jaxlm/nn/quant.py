"""Weight-only quantization: int8 and int4 weights with float scales, kept quantized in the params tree.

A quantized weight is a :class:`QArray`, a pytree (``q``, ``scale``, ``zero``) standing in for the float
array it replaces: it jits, checkpoints with Orbax, shards, and slices along leading (layer) axes like any
other leaf, and ``np.shape`` of it is the float weight's shape, so shape checks keep working.

Layout (``shape`` = the float weight's shape, ``in_axes`` = its contraction axes, contiguous):

- values are grouped along the flattened input axes, ``group`` values per group (``group`` = the whole
  input, i.e. one scale per output channel, for per-channel int8);
- ``scale`` (and ``zero``) have shape ``shape[:i0] + (IN // group,) + shape[i1:]``: the input axes become
  one "group" axis and every other axis (layers, output channels) is kept, so scales follow their weight's
  logical axes when sharded;
- ``bits=8``: ``q`` int8, ``w = scale * q``;
- ``bits=4``: two values per byte along the last input axis (low nibble = even index), values 0..15;
  ``w = scale * (q - 8)`` (symmetric: jaxlm's own int4 and GGUF Q4_0) or ``w = scale * q + zero``
  (GGUF Q4_1's scale-and-min blocks).

:func:`quantize` turns a params tree into a quantized one (int8 per output channel, symmetric; int4 with a
group size, symmetric); :mod:`jaxlm.convert.gguf` builds QArrays straight from Q8_0/Q4_0/Q4_1 blocks.
The model code consumes them through :func:`einsum` (``linear.apply``, the tied/untied output head) and
:func:`take` (the embedding lookup), which dequantise inside the jitted computation.

Why not Qwix: Qwix quantizes Flax (Linen/NNX) modules by intercepting their ``dot_general`` calls at module
call time; jaxlm's models are pure functions over plain pytrees with no modules to intercept, and Qwix has
no representation of GGUF's block formats (Q4_1's per-block minimum, llama.cpp's nibble order), so loading
GGUF kept quantized needs its own array type anyway. The kernel here is ~one reshape and one multiply.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import params as P

MODES = ("int8", "int4")
DEFAULT_GROUP = 128  # int4 values per scale when no group size is given (fewer where the input size asks)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """A weight stored as low-bit integers plus per-group float scales (see the module docstring)."""

    q: Any  # int8 [*shape] (bits 8) or uint8 [*shape, last input axis halved] (bits 4)
    scale: Any  # [*shape[:i0], G, *shape[i1:]]
    zero: Any = None  # like scale, or None (symmetric)
    bits: int = dataclasses.field(default=8, metadata={"static": True})
    group: int = dataclasses.field(default=0, metadata={"static": True})
    in_axes: tuple[int, ...] = dataclasses.field(default=(-2,), metadata={"static": True})  # negative, contiguous

    @property
    def shape(self) -> tuple[int, ...]:
        """The float weight's shape."""
        s = list(self.q.shape)
        if self.bits == 4:
            s[self.in_axes[-1]] *= 2
        return tuple(s)

    @property
    def ndim(self) -> int:
        return len(self.q.shape)

    @property
    def dtype(self):
        return self.scale.dtype

    def _span(self) -> tuple[int, int]:
        n = self.ndim
        return n + self.in_axes[0], n + self.in_axes[-1] + 1

    def values(self) -> jax.Array:
        """The integer values in the weight's shape: int8 (bits 8) or uint8 0..15 (bits 4)."""
        if self.bits == 8:
            return self.q
        return unpack_int4(self.q, self.ndim + self.in_axes[-1])

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """The float weight [*shape] in ``dtype``."""
        s = self.shape
        i0, i1 = self._span()
        n_in = math.prod(s[i0:i1])
        v = self.values().reshape(s[:i0] + (n_in // self.group, self.group) + s[i1:]).astype(dtype)
        if self.bits == 4 and self.zero is None:
            v = v - 8
        w = v * jnp.expand_dims(self.scale.astype(dtype), i0 + 1)
        if self.zero is not None:
            w = w + jnp.expand_dims(self.zero.astype(dtype), i0 + 1)
        return w.reshape(s)

    def nbytes(self) -> int:
        return int(sum(np.dtype(a.dtype).itemsize * math.prod(a.shape) for a in jax.tree.leaves(self)))


def is_quantized(x: Any) -> bool:
    return isinstance(x, QArray)


# ------------------------------------------------------------------------------------------------------------
# int4 packing
def pack_int4(v, axis: int):
    """uint8 values 0..15 -> two per byte along ``axis`` (even index in the low nibble); numpy or jax."""
    xp = jnp if isinstance(v, jax.Array) else np
    v = xp.asarray(v).astype(xp.uint8)
    axis = axis % v.ndim
    if v.shape[axis] % 2:
        raise ValueError(f"int4 packing needs an even size along axis {axis}, got shape {v.shape}.")
    lo = xp.take(v, xp.arange(0, v.shape[axis], 2), axis=axis)
    hi = xp.take(v, xp.arange(1, v.shape[axis], 2), axis=axis)
    return (lo | (hi << 4)).astype(xp.uint8)


def unpack_int4(q, axis: int):
    """Inverse of :func:`pack_int4`: bytes -> uint8 values 0..15, ``axis`` doubled."""
    xp = jnp if isinstance(q, jax.Array) or isinstance(q, jax.core.Tracer) else np
    axis = axis % q.ndim
    lo, hi = q & 0x0F, q >> 4
    v = xp.stack([lo, hi], axis=axis + 1)
    s = list(q.shape)
    s[axis] *= 2
    return v.reshape(s)


# ------------------------------------------------------------------------------------------------------------
# quantizing one array
def _check_in_axes(shape: tuple[int, ...], in_axes: Sequence[int], what: str) -> tuple[int, ...]:
    n = len(shape)
    ax = sorted(a % n for a in in_axes) if n else []
    if not ax or ax != list(range(ax[0], ax[-1] + 1)):
        raise ValueError(f"{what}: input axes {tuple(in_axes)} of shape {shape} must be a non-empty contiguous run.")
    if len(ax) == n:
        raise ValueError(f"{what} of shape {shape} has no output-channel axis (every axis is an input axis): "
                         f"only matmul weights [*in, *out] can be quantized; leave it in float.")
    return tuple(a - n for a in ax)


def default_group(n_in: int) -> int:
    """The int4 group size used when none is given, for a weight whose flattened input size is ``n_in``: the
    largest even size <= :data:`DEFAULT_GROUP` (128) that divides ``n_in`` (128 for a multiple of 128, 96 for
    SmolLM2's 576, 86 for 172, ``n_in`` itself for an even ``n_in`` below 128); 2 for an odd ``n_in``, whose
    last input axis is odd too and cannot be packed (:func:`quantize_array` says so)."""
    for g in range(min(DEFAULT_GROUP, n_in) // 2 * 2, 1, -2):
        if n_in % g == 0:
            return g
    return 2


def quantize_array(w, mode: str = "int8", group: int | None = None, in_axes: Sequence[int] = (-2,),
                   what: str = "weight") -> QArray:
    """A float weight -> :class:`QArray`, symmetric (absmax) scales.

    ``mode="int8"``: per output channel (one scale per output element over all input axes) unless ``group``
    is given; ``mode="int4"``: ``group`` values per scale along the flattened ``in_axes`` (default:
    :func:`default_group` of the input size, 128 where it is a multiple of 128). A given group size that
    does not divide the input size, or a weight with no output axis, is a ValueError.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {MODES}.")
    w = jnp.asarray(w)
    shape = tuple(w.shape)
    if w.ndim < 2:
        raise ValueError(f"{what} of shape {shape} has no output-channel axis: only matmul weights [*in, *out] "
                         f"can be quantized; leave it in float.")
    in_axes = _check_in_axes(shape, in_axes, what)
    n = len(shape)
    i0, i1 = n + in_axes[0], n + in_axes[-1] + 1
    n_in = math.prod(shape[i0:i1])
    bits = 8 if mode == "int8" else 4
    if bits == 4 and shape[i1 - 1] % 2 and group is None:  # no group size fits: say why in the user's terms
        raise ValueError(_odd_packing(what, shape[i1 - 1]))
    g = int(group) if group is not None else n_in if bits == 8 else default_group(n_in)
    if g < 1 or n_in % g:
        raise ValueError(f"{what}: group size {g} does not divide its input size {n_in} (shape {shape}, input "
                         f"axes {in_axes}): choose a group size that divides {n_in}"
                         f"{' (e.g. 32 or 64)' if n_in % 32 == 0 else ''}.")
    if bits == 4 and g % 2:
        raise ValueError(f"{what}: int4 groups hold pairs of values; group size {g} must be even.")
    if bits == 4 and shape[i1 - 1] % 2:
        raise ValueError(_odd_packing(what, shape[i1 - 1]))
    wg = w.astype(jnp.float32).reshape(shape[:i0] + (n_in // g, g) + shape[i1:])
    qmax = 127.0 if bits == 8 else 7.0
    amax = jnp.max(jnp.abs(wg), axis=i0 + 1)
    scale = jnp.where(amax > 0, amax / qmax, 1.0)
    qv = jnp.clip(jnp.round(wg / jnp.expand_dims(scale, i0 + 1)), -qmax - 1, qmax).reshape(shape)
    if bits == 8:
        q = qv.astype(jnp.int8)
    else:
        q = pack_int4((qv + 8).astype(jnp.uint8), i1 - 1)
    return QArray(q=q, scale=scale.astype(jnp.float32), zero=None, bits=bits, group=g, in_axes=in_axes)


def _odd_packing(what: str, size: int) -> str:
    return (f"{what}: int4 packs two values per byte along the last input axis, whose size {size} is odd; "
            f"use int8 for this weight.")


# ------------------------------------------------------------------------------------------------------------
# consuming a QArray in the model
def _per_channel_scale(w: QArray) -> jax.Array | None:
    """The scale of a one-group-per-channel int8 weight with the group axis squeezed (the shape of the
    weight's non-input axes), else None."""
    i0, _ = w._span()
    if w.bits != 8 or w.zero is not None or w.scale.shape[i0] != 1:
        return None
    return jnp.squeeze(w.scale, i0)


def einsum(eq: str, x: jax.Array, w: QArray, dtype=None) -> jax.Array:
    """``jnp.einsum(eq, x, dequantize(w))`` in ``dtype`` (default x.dtype); ``eq`` names ``w``'s axes.

    A per-channel int8 weight is contracted as integers cast to ``dtype`` and scaled after the contraction
    (one multiply per output instead of one per weight); every other layout is dequantised first, inside
    the jitted computation."""
    dtype = dtype or x.dtype
    x = x.astype(dtype)
    sc = _per_channel_scale(w)
    if sc is not None:
        ins, out = eq.replace(" ", "").split("->")
        wl = ins.split(",")[1]
        i0, i1 = w._span()
        out_letters = wl[:i0] + wl[i1:]
        if len(wl) == w.ndim and set(out_letters) <= set(out):
            y = jnp.einsum(eq, x, w.q.astype(dtype))
            return jnp.einsum(f"{out},{out_letters}->{out}", y, sc.astype(dtype))
    return jnp.einsum(eq, x, w.dequantize(dtype))


def take(w: QArray, ids: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Rows ``w[ids]`` of a quantized table [V, D] (quantized along D) -> [*ids.shape, D] in ``dtype``; ids
    outside [0, V) give zero rows (``mode="fill"``, like :func:`jaxlm.nn.embed.apply`)."""
    if w.ndim != 2 or w.in_axes != (-1,):
        raise ValueError(f"a quantized embedding table must be [V, D] quantized along D; got shape {w.shape} "
                         f"with input axes {w.in_axes}.")
    V = w.q.shape[0]
    ids = jnp.where(ids < 0, V, ids)
    rows = jax.tree.map(lambda a: jnp.take(a, ids, axis=0, mode="fill", fill_value=0), w)
    return rows.dequantize(dtype)


# ------------------------------------------------------------------------------------------------------------
# whole params trees
def _lead(axes: tuple) -> int:
    n = 0
    while n < len(axes) and axes[n] == "layers":
        n += 1
    return n


def weight_in_axes(path: str, p: P.Param) -> tuple[int, ...] | None:
    """The contraction axes of a matmul weight (negative indices), or None if ``path`` is not one.

    Linear weights are ``[*in, *out]`` (after any leading ``layers`` axis): a weight projecting back to the
    residual stream (last axis ``"embed"``, e.g. the attention output ``[H, K, D]`` and the MLP's
    ``[F, D]``) contracts every other axis; any other contracts its first axis (``[D, H, K]``, ``[D, F]``,
    the LM head ``[D, V]``). The token table ``[V, D]`` contracts D (its lookup gathers rows)."""
    axes = p.axes[_lead(p.axes):]
    if path.endswith("embed/tokens"):
        return (-1,)
    if not path.endswith("/w") or len(axes) < 2:
        return None
    if axes[-1] == "embed":
        return tuple(range(-len(axes), -1))
    return (-len(axes),)


def quantize(params: Mapping, spec: Mapping, mode: str = "int8", group: int | None = None, *,
             embed: bool = False, head: bool = False, report: Callable[[str], None] | None = None) -> dict:
    """Every matmul weight of ``params`` (a model's tree, described by ``spec = family.spec(cfg)``) as a
    :class:`QArray`: ``mode="int8"`` per output channel (``group`` optional), ``"int4"`` with ``group``
    values per scale; without ``group``, 128 per scale, or per weight whose input size is not a multiple of
    128 the largest even size below that divides it (:func:`default_group`), which ``report`` is told in one
    line (:func:`group_note`). ``embed``: also the token table (int8 per token row / int4 groups along D;
    with tied embeddings that is the output head too); ``head``: also an untied ``lm_head``. Norms, biases
    and positions stay float. Already-quantized leaves are kept as they are."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {MODES}.")
    fs, fp = P.flatten(spec), P.flatten(params)
    out = {}
    chosen: dict[int, int] = {}  # int4 without a group size: input size -> the group it got
    for k, v in fp.items():
        p = fs.get(k)
        ax = None if p is None or isinstance(v, QArray) else weight_in_axes(k, p)
        if ax is not None and (k.endswith("embed/tokens") and not embed or k.startswith("lm_head") and not head):
            ax = None
        if ax is None:
            out[k] = v
            continue
        # int8 on the token table: per row (group = D) so a lookup reads one scale per token
        out[k] = quantize_array(v, mode, group, ax, what=k)
        if mode == "int4" and group is None:
            n_in = math.prod(np.shape(v)[a] for a in out[k].in_axes)
            chosen[n_in] = out[k].group
    note = group_note(chosen)
    if note and report is not None:
        report(note)
    return P.unflatten(out)


def group_note(chosen: Mapping[int, int]) -> str | None:
    """One line naming the int4 group sizes picked below 128 (``chosen``: input size -> group size, as
    :func:`quantize` picked them), e.g. ``int4: group size 96 for the weights whose input size 576 is not
    a multiple of 128 (128 for the others)``; None when every weight got 128."""
    odd = {n: g for n, g in sorted(chosen.items()) if g != DEFAULT_GROUP}
    if not odd:
        return None
    rest = f"; {DEFAULT_GROUP} for the others" if len(odd) < len(chosen) else ""
    if len(odd) == 1:
        (n, g), = odd.items()
        return (f"int4: group size {g} for the weights whose input size {n} is not a multiple of "
                f"{DEFAULT_GROUP}{f' ({rest[2:]})' if rest else ''}")
    sizes = ", ".join(f"{g} for input size {n}" for n, g in odd.items())
    return f"int4: group size {sizes} (not multiples of {DEFAULT_GROUP}{rest})"


def dequantize(params: Mapping, dtype=jnp.float32) -> dict:
    """The float tree: every :class:`QArray` dequantised (others untouched)."""
    return jax.tree.map(lambda a: a.dequantize(dtype) if isinstance(a, QArray) else a, params,
                        is_leaf=is_quantized)


def weight_bytes(params: Mapping) -> int:
    """Bytes of every array in the tree (quantized values, scales and float leaves alike)."""
    return int(sum(np.dtype(a.dtype).itemsize * math.prod(a.shape) for a in jax.tree.leaves(params)))


def describe(params: Mapping) -> dict[str, dict]:
    """``{path: {"bits", "group", "in_axes", "zero"}}`` for every quantized leaf (what a checkpoint stores
    beside the arrays to rebuild the QArrays)."""
    return {k: {"bits": v.bits, "group": v.group, "in_axes": list(v.in_axes), "zero": v.zero is not None}
            for k, v in P.flatten(params).items() if isinstance(v, QArray)}


def to_flat_arrays(params: Mapping) -> dict[str, Any]:
    """``{path: array}`` with each QArray split into ``path/q``, ``path/scale`` (and ``path/zero``), for
    formats that store flat named arrays (safetensors)."""
    out = {}
    for k, v in P.flatten(params).items():
        if isinstance(v, QArray):
            out[f"{k}/q"], out[f"{k}/scale"] = v.q, v.scale
            if v.zero is not None:
                out[f"{k}/zero"] = v.zero
        else:
            out[k] = v
    return out


def from_flat_arrays(flat: Mapping[str, Any], layout: Mapping[str, Mapping]) -> dict:
    """Inverse of :func:`to_flat_arrays` given :func:`describe`'s ``layout``."""
    flat = dict(flat)
    out = {}
    for k, d in layout.items():
        q, scale = flat.pop(f"{k}/q"), flat.pop(f"{k}/scale")
        zero = flat.pop(f"{k}/zero") if d.get("zero") else None
        out[k] = QArray(q=q, scale=scale, zero=zero, bits=int(d["bits"]), group=int(d["group"]),
                        in_axes=tuple(int(a) for a in d["in_axes"]))
    out.update(flat)
    return P.unflatten(out)


def logical_axes(params: Mapping, spec: Mapping) -> dict:
    """A tree matching ``params`` (QArrays expanded into their fields) of logical axis tuples: ``q`` keeps
    its weight's axes; ``scale``/``zero`` keep every axis but the input axes, which become one group axis
    named like the first input axis when there is one input axis, else None (replicated: scales are small)."""
    fs = P.flatten(spec)
    out = {}
    for k, v in P.flatten(params).items():
        axes = fs[k].axes
        if not isinstance(v, QArray):
            out[k] = axes
            continue
        n = len(axes)
        i0, i1 = n + v.in_axes[0], n + v.in_axes[-1] + 1
        g_axis = axes[i0] if i1 - i0 == 1 else None
        s_axes = axes[:i0] + (g_axis,) + axes[i1:]
        out[k] = dataclasses.replace(v, q=axes, scale=s_axes, zero=None if v.zero is None else s_axes)
    return P.unflatten(out)


def shardings(params: Mapping, spec: Mapping, mesh, rules=None) -> dict:
    """NamedShardings for a (quantized) params tree on ``mesh`` by the logical-axis rules: scales follow
    their weight's axes (see :func:`logical_axes`)."""
    from jax.sharding import NamedSharding

    from jaxlm import sharding

    axes = logical_axes(params, spec)
    leaves, treedef = jax.tree.flatten(params)
    ax_leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    return jax.tree.unflatten(treedef, [
        NamedSharding(mesh, sharding.logical_to_pspec(a, mesh, rules, tuple(x.shape)))
        for x, a in zip(leaves, ax_leaves, strict=True)])
