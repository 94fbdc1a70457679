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
# # 05 — Composing models functionally
#
# In jaxlm a model is **data plus pure functions**: a config (a frozen dataclass), a parameter tree (nested
# dicts of arrays) and `apply(params, inputs, cfg)`. So changing the architecture means passing a
# different config or a different function, and "fine-tuning with adapters" is a function from one
# parameter tree to another. This notebook
#
# 1. walks from the 2017 Transformer decoder to a LLaMA-style one, one swap at a time — post-norm → pre-norm,
#    sinusoidal → RoPE → ALiBi, ReLU → SwiGLU, multi-head → grouped-query — and trains each variant for a few
#    hundred steps on Tiny Shakespeare;
# 2. swaps in **functions** the library does not ship: a sliding-window attention (`attn_fn`) and a
#    squared-ReLU feed-forward (`ffn_fn`), passed through `blocks.apply` and `decoder.apply(block_fn=...)`,
#    and a mixture-of-experts layer in place of the dense FFN (`ffn_fn=moe.apply`);
# 3. looks at a parameter tree with treescope;
# 4. writes LoRA (Hu et al., 2021) as a transformation of the params tree, trains only the low-rank factors
#    with optax, and merges them back.
#
# Set `JAXLM_QUICK=1` to run everything small (the test suite does).

# %%
import functools
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import treescope

import jaxlm
from jaxlm import losses
from jaxlm.models import decoder, gpt2
from jaxlm.nn import attention, blocks, linear

QUICK = os.environ.get("JAXLM_QUICK") == "1"
STEPS = 30 if QUICK else 600
LORA_STEPS = 30 if QUICK else 400
print("jax", jax.__version__, "| quick mode:", QUICK, "| steps per variant:", STEPS)

# %% [markdown]
# ## Data: Tiny Shakespeare as bytes
#
# Every variant reads the same byte-level text (vocabulary 256, no tokenizer to train): the hub dataset
# `karpathy/tiny_shakespeare` (its three splits together are char-rnn's input.txt).

# %%
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
from jaxlm.data import text  # noqa: E402

whole = "".join(text.load("karpathy/tiny_shakespeare", split=s)["text"][0] for s in ("train", "validation", "test"))
data = np.frombuffer(whole.encode("utf-8"), dtype=np.uint8).astype(np.int32)
split = int(0.9 * len(data))
train_data, val_data = data[:split], data[split:]
print(f"{len(data):,} bytes: {len(train_data):,} train / {len(val_data):,} validation")

SEQ, BATCH = (64, 16) if QUICK else (128, 32)


def batches(arr, seed):
    """Random windows of SEQ + 1 bytes -> (inputs [B, SEQ], targets [B, SEQ]), forever."""
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.integers(0, len(arr) - SEQ - 1, BATCH)
        w = np.stack([arr[i:i + SEQ + 1] for i in idx])
        yield jnp.asarray(w[:, :-1]), jnp.asarray(w[:, 1:])


# %% [markdown]
# ## 1. From the 2017 decoder to LLaMA, one config field at a time
#
# `gpt2.Config` carries every shared field; `decoder.spec/apply` is the body GPT-2 and LLaMA share.
# We start from Vaswani-style choices and change one thing per step.

# %%
base = gpt2.Config(vocab_size=256, max_len=SEQ, d_model=64 if QUICK else 128, n_heads=4,
                   n_layers=2 if QUICK else 4, d_ff=256 if QUICK else 512, dropout=0.0, attn_dropout=0.0)
variants = {
    "post-norm, sinusoidal, ReLU, MHA (2017)": base.replace(norm_position="post", pos_emb="sinusoidal",
                                                             activation="relu", final_norm=False,
                                                             scale_residual_init=False),
}
variants["pre-norm"] = list(variants.values())[-1].replace(norm_position="pre", final_norm=True)
variants["+ RoPE"] = variants["pre-norm"].replace(pos_emb="rope")
variants["+ ALiBi (instead of RoPE)"] = variants["pre-norm"].replace(pos_emb="alibi")
variants["+ RoPE + SwiGLU"] = variants["+ RoPE"].replace(activation="swiglu", d_ff=base.d_ff * 2 // 3)
variants["+ RMSNorm + GQA (LLaMA-style)"] = variants["+ RoPE + SwiGLU"].replace(norm="rmsnorm", n_kv_heads=2,
                                                                               use_bias=False)
for name, c in variants.items():
    print(f"{name:40s} {jaxlm.count(decoder.spec(c)):9,d} params | norm={c.norm_position}/{c.norm} "
          f"pos={c.pos_emb} ffn={c.activation} kv_heads={c.kv_heads}")

# %% [markdown]
# A small training loop, written with optax right here, so you can see all of it: the loss is
# `losses.cross_entropy` of `decoder.apply`; `block_fn` (default `blocks.apply`) is how section 2 swaps
# functions in.

# %%
def lm_loss(params, inputs, targets, cfg, block_fn=blocks.apply):
    logits = decoder.apply(params, inputs, cfg, block_fn=block_fn)  # [B, T, V]
    s = losses.cross_entropy(logits, targets)
    return s["loss"] / s["weight"]


def train(cfg, steps, *, block_fn=blocks.apply, seed=0, lr=3e-3):
    params = decoder.init(jax.random.key(seed), cfg)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, steps // 10, steps), weight_decay=0.0))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, inputs, targets):
        loss, g = jax.value_and_grad(lm_loss)(params, inputs, targets, cfg, block_fn)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    it, curve = batches(train_data, seed), []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, *next(it))
        curve.append(float(loss))
    return params, curve


@functools.partial(jax.jit, static_argnums=(3, 4))
def _eval_loss(params, inputs, targets, cfg, block_fn):
    return lm_loss(params, inputs, targets, cfg, block_fn)


def val_loss(params, cfg, block_fn=blocks.apply, n=4 if QUICK else 20):
    it = batches(val_data, 1234)
    return float(np.mean([_eval_loss(params, *next(it), cfg, block_fn) for _ in range(n)]))


results, curves = {}, {}
for name, c in variants.items():
    t0 = time.perf_counter()
    params, curve = train(c, STEPS)
    results[name] = (val_loss(params, c), time.perf_counter() - t0)
    curves[name] = curve
    print(f"{name:40s} val loss {results[name][0]:.3f} nats/byte  ({results[name][1]:.0f} s)")

# %%
fig, ax = plt.subplots(figsize=(8, 4))
for name, curve in curves.items():
    smooth = np.convolve(curve, np.ones(10) / 10, mode="valid") if len(curve) > 20 else curve
    ax.plot(smooth, label=name)
ax.set_xlabel("step")
ax.set_ylabel("train loss (nats / byte)")
ax.set_title(f"one swap at a time ({STEPS} steps each)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# (With a few hundred steps on a CPU these differences are small and partly noise; the point is that each
# variant is one field away from the last and they all train. At scale, pre-norm trains stably without
# warm-up tricks, and RoPE/ALiBi extrapolate to longer contexts than learned or sinusoidal positions.)
#
# ## 2. Swapping in functions the library does not ship
#
# `blocks.apply(p, x, cfg, *, attn_fn, ffn_fn, norm_fn)` takes its sub-layers as arguments and
# `decoder.apply(..., block_fn=...)` takes the block. Any function with the same signature fits.
#
# **Sliding-window attention** (Longformer / Mistral): each query sees only the last `WINDOW` keys. We
# wrap `attention.apply` and AND a band into the causal mask it receives. (This wrapper covers training and
# full-sequence scoring; with a KV cache the mask spans cache slots and the band would be built over slots.)

# %%
WINDOW = 8


def sliding_window_attention(p, x, cfg, *, mask=None, **kw):
    T = x.shape[1]
    i = jnp.arange(T)
    band = (i[:, None] - i[None, :]) < WINDOW  # [T, T]: key within WINDOW positions of the query
    mask = band[None, None] if mask is None else jnp.logical_and(mask, band)
    return attention.apply(p, x, cfg, mask=mask, **kw)


# **Squared ReLU** (So et al., 2021, "Primer"): the same parameters as the ReLU FFN, a different function.
def squared_relu_ffn(p, x, cfg, *, key=None):
    h = jnp.square(jax.nn.relu(linear.apply(p["wi"], x, "BTD,DF->BTF")))  # [B, T, F]
    return linear.apply(p["wo"], h, "BTF,FD->BTD")  # [B, T, D]


custom_block = functools.partial(blocks.apply, attn_fn=sliding_window_attention, ffn_fn=squared_relu_ffn)
cfg_custom = variants["+ RoPE"]  # pre-norm, RoPE, plain (non-gated) FFN whose "wi" squared_relu_ffn reads

# %% [markdown]
# Check that the window is real. With `L` layers of window `W`, position `t` can only be influenced by
# positions `> t - L (W - 1)`. Change the first byte: outputs further than that must not move.

# %%
p_custom = decoder.init(jax.random.key(0), cfg_custom)
toks = jnp.asarray(train_data[None, :SEQ])
a = decoder.apply(p_custom, toks, cfg_custom, block_fn=custom_block)
b = decoder.apply(p_custom, toks.at[0, 0].set((toks[0, 0] + 1) % 256), cfg_custom, block_fn=custom_block)
reach = cfg_custom.n_layers * (WINDOW - 1)
moved = np.asarray(jnp.abs(a - b).max(-1)[0] > 0)
print(f"receptive field of position 0 ends at {reach}; positions that moved: 0..{np.nonzero(moved)[0].max()}")
assert not moved[reach + 1:].any() and moved[: reach + 1].any()

full = decoder.apply(p_custom, toks, cfg_custom)  # the same params with the default (full) attention
print("full causal attention: the last position moves too:",
      bool(jnp.abs(full - decoder.apply(p_custom, toks.at[0, 0].set((toks[0, 0] + 1) % 256), cfg_custom))[0, -1]
           .max() > 0))

params_custom, curve_custom = train(cfg_custom, STEPS, block_fn=custom_block)
print(f"sliding-window + squared-ReLU: val loss {val_loss(params_custom, cfg_custom, custom_block):.3f} "
      f"(full attention + ReLU, same config: {results['+ RoPE'][0]:.3f})")

# %% [markdown]
# **A mixture of experts instead of the dense FFN** (Switch Transformer / Mixtral): `jaxlm.nn.moe.apply` has
# the FFN's signature, so it is one more `ffn_fn`. Each token goes to the `top_k` of `n_experts` SwiGLU
# experts its router picks. The MoE layer has its own narrow config and parameters (`moe.spec`: a router
# [D, E] and experts [E, D, F]), so we put them in place of the dense `mlp` of every layer, stacked like
# the rest; it returns `(y, router statistics)` and the block passes the statistics on in its aux. Here
# each expert is a quarter of the dense FFN's width, so with top-2 a token uses half the dense FFN's
# parameters while the layer holds twice as many. (The `mixtral` family is this with a load-balancing loss
# in its training objective: `jaxlm train ... model.preset=mixtral-tiny`.)

# %%
from jaxlm import params as jparams  # noqa: E402
from jaxlm.nn import moe, stack  # noqa: E402

cfg_dense = variants["+ RMSNorm + GQA (LLaMA-style)"]
moe_cfg = moe.MoEConfig(d_model=cfg_dense.d_model, d_ff=cfg_dense.d_ff // 4, n_experts=8, top_k=2)


def moe_ffn(p, x, cfg, *, key=None):  # cfg is the dense FFN's config: the MoE layer reads its own
    return moe.apply(p, x, moe_cfg, key=key)


moe_block = functools.partial(blocks.apply, ffn_fn=moe_ffn)
p_moe = decoder.init(jax.random.key(0), cfg_dense)
p_moe["layers"]["mlp"] = jparams.init(jax.random.key(1), stack.spec(moe.spec(moe_cfg), cfg_dense.n_layers))
logits, aux = decoder.apply(p_moe, toks, cfg_dense, block_fn=moe_block, return_aux=True)
print("per-layer share of tokens per expert (sums to top_k = 2):\n", np.round(np.asarray(aux["moe"]["load"]), 2))
print(f"dense FFN parameters per layer {jaxlm.count(decoder.spec(cfg_dense)['layers']['mlp']) // cfg_dense.n_layers:,}"
      f" | MoE layer {jaxlm.count(moe.spec(moe_cfg)):,}")


def train_moe(steps, seed=0, lr=3e-3):
    # train() above with the MoE params and block (no load-balancing loss here; the mixtral family adds it)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, steps // 10, steps), weight_decay=0.0))
    params, opt_state = p_moe, opt.init(p_moe)

    @jax.jit
    def step(params, opt_state, inputs, targets):
        loss, g = jax.value_and_grad(lm_loss)(params, inputs, targets, cfg_dense, moe_block)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    it = batches(train_data, seed)
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, *next(it))
    return params


params_moe = train_moe(STEPS)
print(f"MoE FFN (8 experts, top-2): val loss {val_loss(params_moe, cfg_dense, moe_block):.3f} "
      f"(dense SwiGLU, same config: {results['+ RMSNorm + GQA (LLaMA-style)'][0]:.3f})")

# %% [markdown]
# `norm_fn` works the same way, e.g. `functools.partial(blocks.apply, norm_fn=my_norm)` with
# `my_norm(p, x, cfg)` reading the `scale`/`bias` leaves of `norms.spec`.
#
# ## 3. Looking at a parameter tree with treescope
#
# A params tree is a plain dict, so any pytree tool works on it. treescope renders it with shapes, dtypes
# and summary statistics (in Jupyter, `treescope.display(params)` gives an interactive view; the text form
# works anywhere). Note the leading `layers` axis: the blocks are stacked and run by `lax.scan`.

# %%
llama_like = variants["+ RMSNorm + GQA (LLaMA-style)"]
p_ll = decoder.init(jax.random.key(0), llama_like)
print(treescope.render_to_text(p_ll))
print(jaxlm.params.summary(decoder.spec(llama_like)))

# %% [markdown]
# ## 4. LoRA as a transformation of the params tree
#
# LoRA freezes a weight $W$ and learns a low-rank update, $W' = W + \frac{\alpha}{r} A B$ with
# $A \in \mathbb{R}^{D \times r}$, $B \in \mathbb{R}^{r \times (H K)}$, $B$ initialised to zero (so training
# starts from the pretrained model exactly). Here it is three functions over dicts: make the factors, merge
# them into a tree, and a loss whose trainable argument is the factors only. We adapt the query and value
# projections of every layer (the paper's choice), at once for all layers thanks to the stacked axis.
#
# Story: a model pre-trained on Shakespeare (section 1's LLaMA-style variant, trained again here) is
# adapted to a new domain — English image captions from Multi30k — training ~2 % of the parameters.

# %%
RANK, ALPHA = 4, 8.0
TARGETS = ("q", "v")


def lora_init(key, params, rank=RANK, targets=TARGETS):
    """{"q": {"a": [L, D, r], "b": [L, r, H, K]}, ...} for the attention projections named in targets."""
    out = {}
    for i, name in enumerate(targets):
        w = params["layers"]["attn"][name]["w"]  # [L, D, N, K]
        L, D, N, K = w.shape
        a = jax.random.normal(jax.random.fold_in(key, i), (L, D, rank)) / np.sqrt(D)
        out[name] = {"a": a, "b": jnp.zeros((L, rank, N, K))}
    return out


def lora_merge(params, lora, alpha=ALPHA):
    """A new params tree with W + alpha / r * A B in each targeted projection; nothing else changes."""
    attn = dict(params["layers"]["attn"])
    for name, f in lora.items():
        r = f["a"].shape[-1]
        delta = jnp.einsum("LDr,LrNK->LDNK", f["a"], f["b"]) * (alpha / r)
        attn[name] = {**attn[name], "w": attn[name]["w"] + delta}
    return {**params, "layers": {**params["layers"], "attn": attn}}


def lora_loss(lora, frozen, inputs, targets, cfg):
    return lm_loss(lora_merge(frozen, lora), inputs, targets, cfg)


# %% [markdown]
# The pre-trained model (a quick Shakespeare run), and the new domain:

# %%
pretrained, _ = train(llama_like, STEPS)
try:
    captions_text = "\n".join(text.load("bentrevett/multi30k")["en"]) + "\n"
    captions = np.frombuffer(captions_text.encode("utf-8"), np.uint8).astype(np.int32)
except ValueError as e:  # offline without a mirror: adapt to a different register, this notebook's own source
    print(f"Multi30k unavailable ({e}); using this notebook's markdown as the new domain instead.")
    captions = np.frombuffer(Path(__file__ if "__file__" in globals() else "05_composing_models.py")
                             .read_bytes(), np.uint8).astype(np.int32)
cap_split = int(0.9 * len(captions))
cap_train, cap_val = captions[:cap_split], captions[cap_split:]


def domain_loss(params, arr, n=4 if QUICK else 20):
    it = batches(arr, 99)
    return float(np.mean([_eval_loss(params, *next(it), llama_like, blocks.apply) for _ in range(n)]))


lora = lora_init(jax.random.key(42), pretrained)
n_lora, n_all = jaxlm.count(lora), jaxlm.count(pretrained)
print(f"trainable LoRA parameters: {n_lora:,} of {n_all:,} ({100 * n_lora / n_all:.1f} %)")
merged0 = lora_merge(pretrained, lora)
print("B = 0, so the merged model is the pre-trained model exactly:",
      all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(merged0), jax.tree.leaves(pretrained))))
print(f"before LoRA: caption val loss {domain_loss(pretrained, cap_val):.3f}, "
      f"Shakespeare val loss {domain_loss(pretrained, val_data):.3f}")

# %% [markdown]
# Train the factors only: `jax.grad` differentiates `lora_loss` with respect to its first argument (the
# LoRA tree); the frozen tree is an ordinary input.

# %%
opt = optax.adam(1e-2)
opt_state = opt.init(lora)


@jax.jit
def lora_step(lora, opt_state, inputs, targets):
    loss, g = jax.value_and_grad(lora_loss)(lora, pretrained, inputs, targets, llama_like)
    updates, opt_state = opt.update(g, opt_state, lora)
    return optax.apply_updates(lora, updates), opt_state, loss


frozen_before = jax.tree.map(jnp.copy, pretrained)
it, lora_curve = batches(cap_train, 7), []
for _ in range(LORA_STEPS):
    lora, opt_state, loss = lora_step(lora, opt_state, *next(it))
    lora_curve.append(float(loss))

merged = lora_merge(pretrained, lora)
print(f"after {LORA_STEPS} LoRA steps: caption val loss {domain_loss(merged, cap_val):.3f}, "
      f"Shakespeare val loss {domain_loss(merged, val_data):.3f}")
print("frozen weights untouched:",
      all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(pretrained), jax.tree.leaves(frozen_before))))
delta = merged["layers"]["attn"]["q"]["w"][0] - pretrained["layers"]["attn"]["q"]["w"][0]  # [D, H, K]
rank = int(np.linalg.matrix_rank(np.asarray(delta.reshape(delta.shape[0], -1)), tol=1e-6))
print(f"rank of the merged update to layer 0's query kernel: {rank} (<= r = {RANK})")
assert rank <= RANK

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(lora_curve)
ax.set_xlabel("LoRA step")
ax.set_ylabel("caption train loss (nats / byte)")
ax.set_title(f"LoRA r={RANK} on q, v: {n_lora:,} trainable parameters")
plt.show()

# %% [markdown]
# The merged tree is an ordinary params tree: `decoder.apply(merged, ...)` runs at the original speed, can be
# saved, converted to Hugging Face format or served, with no adapter code anywhere. Keeping `lora` separate
# instead lets one frozen base serve several adapters — each a few thousand numbers.
