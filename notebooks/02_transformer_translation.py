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
# # 02 — The Transformer: translating German to English
#
# Vaswani et al. (2017) introduced the Transformer as an encoder-decoder for translation. This notebook
#
# 1. plots the sinusoidal positional encodings of §3.5;
# 2. builds the encoder-decoder (`jaxlm.models.transformer`: post-norm blocks, ReLU FFN, embeddings scaled
#    by $\sqrt{d_{model}}$ and shared with the output projection) and trains it on **Multi30k de→en** with
#    label smoothing, through `jaxlm.train`;
# 3. translates validation sentences with **greedy** decoding and **beam search** (`jaxlm.generate`), and
#    scores them with **BLEU** (sacrebleu, detokenised).
#
# `JAXLM_QUICK=1` trains a tiny model for a few steps (its translations are not yet translations); the full
# setting is `experiments/cpu_multi30k.py`, whose numbers are in `experiments/README.md`.

# %%
import json
import os
import tempfile
from pathlib import Path

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxlm
from jaxlm import metrics
from jaxlm.evaluation import seq2seq_outputs
from jaxlm.models import transformer
from jaxlm.nn import positions
from jaxlm.pretrained import load_run
from jaxlm.train import config as C
from jaxlm.train.loop import train

QUICK = os.environ.get("JAXLM_QUICK") == "1"
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
RUNS = Path(os.environ.get("JAXLM_RUNS", tempfile.mkdtemp(prefix="jaxlm_nb02_")))
print("quick mode:", QUICK, "| data mirror:", os.environ.get("JAXLM_DATA", "none (the hub)"), "| runs:", RUNS)

# %% [markdown]
# ## 1. Sinusoidal positional encodings
#
# $$PE_{(pos, 2i)} = \sin(pos / 10000^{2i/d}),\qquad PE_{(pos, 2i+1)} = \cos(pos / 10000^{2i/d}).$$
#
# Each pair of channels is a clock at its own frequency, from a period of $2\pi$ to $10000 \cdot 2\pi$
# positions. For any offset $k$, $PE_{pos+k}$ is a fixed linear function (a rotation per pair) of $PE_{pos}$,
# which the paper hoped would let attention find relative positions.

# %%
pe = np.asarray(positions.sinusoidal(jnp.arange(100), 128))  # [T, D]
fig, axes = plt.subplots(1, 2, figsize=(13, 3.5))
im = axes[0].imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[0].set_xlabel("position")
axes[0].set_ylabel("channel")
axes[0].set_title("PE[pos, channel], d_model = 128")
fig.colorbar(im, ax=axes[0])
for ch in (0, 2, 10, 40):
    axes[1].plot(pe[:, ch], label=f"channel {ch}")
axes[1].set_xlabel("position")
axes[1].legend(fontsize=8)
axes[1].set_title("a few channels: lower channels turn faster")
plt.tight_layout()
plt.show()

sims = pe @ pe.T  # dot products between positions depend (almost) only on the distance
print("PE[10]·PE[10+k] for k=1..4:", np.round(sims[10, 11:15], 2), " PE[50]·PE[50+k]:", np.round(sims[50, 51:55], 2))

# %% [markdown]
# ## 2. The data and the model
#
# Multi30k: 29,000 image captions in German with English translations, 1,014 validation pairs: the hub
# dataset `bentrevett/multi30k` (columns `de`, `en`; splits train / validation / test).

# %%
from jaxlm.data import text  # noqa: E402

MULTI30K = "bentrevett/multi30k"
val = text.load(MULTI30K, split="validation")
de, en = val["de"], val["en"]
for i in range(3):
    print(f"de: {de[i]}\nen: {en[i]}\n")

# %% [markdown]
# The paper's base model is 6 + 6 layers, 512 wide (`transformer-base`, 63 M parameters with a 37,000-token
# vocabulary). A 2-core CPU trains a 3 + 3 layer, 256-wide one in about half an hour
# (`experiments/cpu_multi30k.py`); quick mode shrinks it further. One byte-level BPE vocabulary is trained
# on both languages and shared by the encoder embedding, the decoder embedding and the output layer.

# %%
if QUICK:
    model = transformer.Config(vocab_size=1000, max_len=32, d_model=64, n_heads=4, n_layers=2, d_ff=256)
    steps, batch, n_train, vocab = 80, 32, 3000, 1000
else:
    model = transformer.Config(vocab_size=8000, max_len=64, d_model=256, n_heads=4, n_layers=3, d_ff=1024)
    steps, batch, n_train, vocab = 1200, 128, None, 8000
print(f"{jaxlm.count(transformer.spec(model)):,} parameters")
run = C.RunConfig(
    model=model,
    train=C.TrainConfig(task="seq2seq", steps=steps, batch_size=batch, lr=1e-3 if not QUICK else 3e-3,
                        warmup_steps=max(steps // 12, 1), b2=0.98, label_smoothing=0.1, eval_every=steps // 4,
                        eval_batches=4 if QUICK else 8, checkpoint_every=0, log_every=10, progress=False,
                        tensorboard=False, plot=False),
    data=C.DataConfig(path=MULTI30K, source_column="de", target_column="en", eval_split="validation", tokenizer="bpe", vocab_size=vocab, seq_len=32,
                      target_len=32, max_examples=n_train, max_eval_examples=256 if QUICK else None),
)
out = train(run, RUNS / "multi30k", quiet=True)
print({k: out[k] for k in ("step", "loss", "last_eval")})

rows = [json.loads(x) for x in (RUNS / "multi30k" / "metrics.jsonl").read_text().splitlines()]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(*zip(*[(r["step"], r["loss"]) for r in rows if "loss" in r]), label="train (label-smoothed)")
ax.plot(*zip(*[(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]), "o-", label="validation")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats / token)")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Greedy decoding, beam search, BLEU
#
# Greedy decoding takes the most likely token at each step. Beam search keeps the `beam_size` best
# partial translations and ranks finished ones by log-probability divided by the GNMT length penalty
# $((5 + |y|)/6)^{\alpha}$ (the paper: beam 4, $\alpha = 0.6$). Both run the encoder once and the decoder with
# a KV cache, in one `jax.jit`. BLEU is sacrebleu's corpus BLEU on detokenised text.

# %%
mt_run = load_run(RUNS / "multi30k")
n_eval = 100 if QUICK else len(de)
pairs = [(s, t) for s, t in zip(de, en) if s.strip() and t.strip()][:n_eval]
src, ref = [s for s, _ in pairs], [t for _, t in pairs]
greedy = seq2seq_outputs(mt_run, src, beam_size=1, max_new_tokens=32)
beam = seq2seq_outputs(mt_run, src, beam_size=4, max_new_tokens=32)
for i in range(3):
    print(f"de    : {src[i]}\nref   : {ref[i]}\ngreedy: {greedy[i]}\nbeam 4: {beam[i]}\n")
bleu_greedy, bleu_beam = metrics.bleu(greedy, ref), metrics.bleu(beam, ref)
print(f"BLEU on {len(src)} validation sentences: greedy {bleu_greedy:.1f}, beam 4 {bleu_beam:.1f}")

# %% [markdown]
# In quick mode the model has seen a few thousand sentences for a few dozen steps, so BLEU is near zero.
# The CPU recipe reaches the numbers in `experiments/README.md`; the paper's base model on WMT'14 En-De
# reaches 27.3 BLEU (a harder task: news text, 4.5 M sentence pairs).
#
# A last look inside: the decoder's cross-attention shows which source tokens each output token reads.

# %%
tok = mt_run.tokenizer
s_ids = tok.encode(src[0], add_special_tokens=False).ids + [mt_run.config.eos_id]
t_ids = [mt_run.config.bos_id] + tok.encode(beam[0], add_special_tokens=False).ids
enc = transformer.encode(mt_run.params, jnp.asarray([s_ids]), mt_run.config)
_, aux = transformer.decode(mt_run.params, jnp.asarray([t_ids]), enc, mt_run.config, return_aux=True,
                            return_weights=True)
cross = np.asarray(aux["cross_weights"][-1, 0].mean(0))  # last layer, mean over heads: [T, S]
fig, ax = plt.subplots(figsize=(6, 5))
ax.imshow(cross, cmap="viridis")
ax.set_xticks(range(len(s_ids)), [tok.id_to_token(i) for i in s_ids], rotation=90, fontsize=7)
ax.set_yticks(range(len(t_ids)), [tok.id_to_token(i) for i in t_ids], fontsize=7)
ax.set_title("cross-attention, last decoder layer")
plt.tight_layout()
plt.show()
