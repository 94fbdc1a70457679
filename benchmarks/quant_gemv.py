"""Batch-1 matrix-vector products with int8 weights on XLA:CPU: which layout lets XLA read the int8 bytes.

Decoding one token multiplies a [1, D] activation by every weight matrix, so its speed is the bytes of
weights read per token. An int8 weight is 4x fewer bytes than float32 only if XLA reads the int8 array
directly; if it first materialises a float32 copy (a separate convert) and then calls its dot kernel, the
int8 path reads 1 + 4 + 4 bytes per weight instead of 4. This script times, for one weight shape, the
float32 GEMV against int8 stored as [D, F] (jaxlm's [in, out] layout today) and as [F, D] (out-major,
contraction axis minor, the layout GGUF and llama.cpp use), and an int8 x int8 product with int32
accumulation (the activation quantized per row on the fly, W8A8: what an integer dot kernel would need),
and prints XLA's fusion decision.

    python benchmarks/quant_gemv.py [--shapes 576x1536 2048x8192 4096x11008]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def _time(f, *args, n: int = 100, rounds: int = 5) -> float:
    """Best-of-``rounds`` mean seconds per call of ``f(*args)`` over ``n`` calls."""
    f(*args).block_until_ready()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            r = f(*args)
        r.block_until_ready()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def _fused(f, *args) -> bool:
    """Whether XLA turned the dot into a loop fusion that reads the int8 operand (no separate convert)."""
    hlo = f.lower(*args).compile().as_text()
    return "dot_fusion" in hlo and "wrapped_convert" not in hlo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["576x1536", "1536x576", "2048x8192"])
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    f_float = jax.jit(lambda x, w: x @ w)                                           # w [D, F] float32
    f_in_out = jax.jit(lambda x, q, s: (x @ q.astype(jnp.float32)) * s)             # q [D, F] int8
    f_out_in = jax.jit(lambda x, q, s: (x @ q.T.astype(jnp.float32)) * s)           # q [F, D] int8

    @jax.jit
    def f_w8a8(x, q, s):  # x quantized per row to int8, int8 x int8 -> int32, rescaled
        a = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127
        xq = jnp.round(x / a).astype(jnp.int8)
        acc = jax.lax.dot_general(xq, q, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
        return acc.astype(jnp.float32) * s * a
    print("| D x F | float32 [D, F] (us) | int8 [D, F] (us) | int8 [F, D] (us) | int8 [F, D] vs float32 | "
          "[D, F] fused | [F, D] fused | int8 x int8 -> int32 (us) | float32 GB/s | int8 x int8 GB/s |")
    print("|---|---:|---:|---:|---:|---|---|---:|---:|---:|")
    for shape in a.shapes:
        D, F = (int(v) for v in shape.split("x"))
        x = jnp.asarray(rng.standard_normal((1, D)), jnp.float32)
        w = rng.standard_normal((D, F)).astype(np.float32)
        s = jnp.asarray(np.abs(w).max(0) / 127)
        q = jnp.asarray(np.round(w / np.asarray(s)).astype(np.int8))
        qt = jnp.asarray(np.ascontiguousarray(np.asarray(q).T))
        np.testing.assert_allclose(f_in_out(x, q, s), f_out_in(x, qt, s), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(f_w8a8(x, q, s), f_in_out(x, q, s), rtol=0.05, atol=0.05 * float(jnp.abs(
            f_in_out(x, q, s)).max()))
        t = [_time(f_float, x, jnp.asarray(w)), _time(f_in_out, x, q, s), _time(f_out_in, x, qt, s),
             _time(f_w8a8, x, q, s)]
        print(f"| {D} x {F} | {t[0] * 1e6:,.0f} | {t[1] * 1e6:,.0f} | {t[2] * 1e6:,.0f} | {t[0] / t[2]:.2f}x | "
              f"{_fused(f_in_out, x, q, s)} | {_fused(f_out_in, x, qt, s)} | {t[3] * 1e6:,.0f} | "
              f"{D * F * 4 / t[0] / 1e9:.1f} | {D * F / t[3] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
