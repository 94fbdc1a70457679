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
# repository's git URL or a wheel built with `python -m build`). This notebook needs no data.

# %%
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxlm") is None:  # not in the repository's environment: install it
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", os.environ.get("JAXLM_PIP", "jaxlm")])

# %% [markdown]
# # 06 — Fine-tuning as function transforms: LoRA, SFT masking, DPO
#
# jaxlm models are pure functions of a params tree, so post-training needs no module surgery:
#
# 1. **LoRA** (Hu et al., 2021) is a function from (base params, adapters) to a params tree that the
#    unchanged `apply` runs: `jaxlm.finetune.lora.combine` puts `lora_a`, `lora_b` next to each adapted
#    weight and `jaxlm.nn.linear.apply` adds `((x @ A) @ B)` — the full-rank `A·B` is never formed.
#    Only the adapters are differentiated, optimised and saved; `merge` folds them into the base.
# 2. **SFT on conversations**: render with the chat template, train only on what the assistant says
#    (`jaxlm.finetune.sft`), pack conversations without letting them see each other.
# 3. **DPO** (Rafailov et al., 2023): a loss over (prompt, chosen, rejected) against a frozen reference
#    (`jaxlm.finetune.dpo`).
#
# Everything runs on the tiny LLaMA preset in seconds; `JAXLM_QUICK=1` shortens it further.

# %%
import math
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxlm import models
from jaxlm import params as P
from jaxlm.data.text import char_tokenizer
from jaxlm.finetune import dpo, lora, sft
from jaxlm.train.state import create_state
from jaxlm.train.step import make_train_step
from jaxlm.train.tasks import make_task

QUICK = os.environ.get("JAXLM_QUICK") == "1"
STEPS = 20 if QUICK else 150
fam, cfg = models.get("llama-tiny")
base = fam.init(jax.random.key(0), cfg)
print(f"llama-tiny: {P.count(base):,} parameters; quick mode: {QUICK}")

# %% [markdown]
# ## 1. LoRA as a params transformation
#
# Targets are regular expressions over projection paths. A pattern that matches nothing is an error that
# lists the paths there are.

# %%
lc = lora.LoRAConfig(targets=("layers/attn/(q|v)", "layers/mlp/wo"), rank=4, alpha=8.0, dropout=0.05)
print("adapted:", lora.targets(cfg, lc))
adapters = lora.init(jax.random.key(1), cfg, lc)
for k, v in P.flatten(adapters).items():
    print(f"  {k:28s} {tuple(v.shape)}  axes {P.flatten(P.logical_axes(lora.spec(cfg, lc)))[k]}")
combined = lora.combine(base, adapters, lc)
print("an adapted projection now holds:", sorted(combined["layers"]["attn"]["q"]))

# %% [markdown]
# B starts at zero, so the adapted model *is* the base model, bit for bit:

# %%
tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
print("B = 0 logits identical:", bool(jnp.array_equal(fam.apply(base, tokens, cfg), fam.apply(combined, tokens, cfg))))

# %% [markdown]
# Train the adapters on a toy task (continue a counting sequence mod 50). `lora.make_train_step`
# differentiates only the adapters; the base is an ordinary argument of the jitted step. The optimizer
# state holds adapter moments only.

# %%
def counting_batch(seed, n=8, T=24):
    start = np.random.default_rng(seed).integers(0, 50, n)
    seq = (start[:, None] + np.arange(T + 1)[None]) % 50 + 10
    return {"inputs": jnp.asarray(seq[:, :-1]), "targets": jnp.asarray(seq[:, 1:]), "weights": jnp.ones((n, T))}


opt = optax.adamw(3e-3)
opt_state = opt.init(adapters)
full_bytes = lora.tree_bytes(jax.eval_shape(opt.init, base))
print(f"AdamW state: full fine-tuning {full_bytes:,} B, LoRA {lora.tree_bytes(opt_state):,} B "
      f"({1 - lora.tree_bytes(opt_state) / full_bytes:.1%} smaller)")
step = jax.jit(lora.make_train_step(make_task("causal_lm"), cfg, lc, opt))
curve = []
for s in range(STEPS):
    adapters, opt_state, m = step(adapters, opt_state, base, counting_batch(s), jax.random.key(s))
    curve.append(float(m["loss"]))
print(f"loss {curve[0]:.3f} -> {curve[-1]:.3f}")

merged = lora.merge(base, adapters, lc)  # a plain params tree: export, convert or decode at full speed
b = counting_batch(999)
diff = jnp.abs(fam.apply(merged, b["inputs"], cfg) - fam.apply(lora.combine(base, adapters, lc), b["inputs"], cfg))
print(f"merged vs unmerged: max |Δlogit| = {float(diff.max()):.2e}")

# %% [markdown]
# ## 2. SFT: the loss sees the assistant only
#
# Each conversation is rendered with the checkpoint's chat template (here ChatML, SmolLM2's) through the
# same function `jaxlm generate --chat` uses. Pieces the assistant wrote (reply + end-of-turn marker) are
# the targets; system and user turns and the template's headers are context.

# %%
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
rng = np.random.default_rng(0)
convs = []
for _ in range(64):
    a, b_ = rng.integers(0, 10, 2)
    convs.append([{"role": "user", "content": f"{a}+{b_}?"}, {"role": "assistant", "content": str(a + b_)}])
for text, is_assistant in sft.render(convs[0], CHATML):
    print(("TRAIN " if is_assistant else "ctx   ") + repr(text))

# %% [markdown]
# The toy model reads characters, so below a compact template (same structure: role markers, an
# end-of-turn symbol) keeps each conversation short enough that several share a row.

# %%
SHORT = ("{% for m in messages %}{{'<' + m['role'][0] + '>' + m['content'] + '|'}}{% endfor %}"
         "{% if add_generation_prompt %}{{'<a>'}}{% endif %}")
for text, is_assistant in sft.render(convs[0], SHORT):
    print(("TRAIN " if is_assistant else "ctx   ") + repr(text))
tok = char_tokenizer(["".join(t for t, _ in sft.render(c, SHORT)) for c in convs])
arrays, info = sft.build(convs, tok, SHORT, seq_len=64)
print(info)

# %% [markdown]
# Packing: several conversations share a row, with segment ids (attention stays inside a conversation)
# and positions restarting at each one. Weights are 1 only on assistant targets.

# %%
row = 0
print("segment ids:", arrays["segment_ids"][row][:40])
print("weights    :", arrays["weights"][row][:40].astype(int))
alone_ids, _ = sft.encode(convs[0], tok, SHORT)
packed = fam.apply(base, jnp.asarray(arrays["inputs"][:1]), cfg, positions=jnp.asarray(arrays["positions"][:1]),
                   segment_ids=jnp.asarray(arrays["segment_ids"][:1]))[0]
alone = fam.apply(base, jnp.asarray(alone_ids[None, :-1]), cfg)[0]
seg1 = arrays["segment_ids"][0] == 1
print("conversation 1 packed == alone:", float(jnp.abs(packed[seg1] - alone).max()) < 1e-5)

opt2 = optax.adamw(3e-3)
sft_step = jax.jit(make_train_step(make_task("sft"), cfg, opt2))
state = create_state(0, cfg, opt2, params=base)
sft_curve = []
for s in range(STEPS):
    i = (s * 4) % len(arrays["inputs"])
    state, m = sft_step(state, {k: jnp.asarray(v[i:i + 4]) for k, v in arrays.items()})
    sft_curve.append(float(m["loss"]))
print(f"SFT loss on assistant tokens: {sft_curve[0]:.3f} -> {sft_curve[-1]:.3f}")

# %% [markdown]
# ## 3. DPO's loss
#
# With h = (log π(y_w) − log ref(y_w)) − (log π(y_l) − log ref(y_l)), the loss is −log σ(βh): ln 2 when the
# policy is the reference, falling as the policy prefers the chosen completion more than the reference did.

# %%
h = np.linspace(-40, 40, 200)
fig, ax = plt.subplots(figsize=(5, 3))
for beta in (0.05, 0.1, 0.5):
    ax.plot(h, np.asarray(dpo.loss(jnp.asarray(h), 0.0, 0.0, 0.0, beta=beta)["loss"]), label=f"β={beta}")
ax.axhline(math.log(2), color="gray", ls=":")
ax.set_xlabel("log-ratio difference h")
ax.set_ylabel("DPO loss")
ax.legend()
plt.show()

# %% [markdown]
# Toy preference: after the same prompt, prefer counting up over counting down. The reference is the
# starting model, its log-probs computed once; the step logs the implicit rewards and their margin.

# %%
prompts, chosen, rejected = [], [], []
for _ in range(16):
    s0 = int(rng.integers(20, 40))
    prompts.append(np.arange(s0, s0 + 4))
    chosen.append(np.arange(s0 + 4, s0 + 8))
    rejected.append(np.arange(s0 + 2, s0 - 2, -1))
pairs = dpo.precompute_reference(base, dpo.build(prompts, chosen, rejected, seq_len=10), cfg)
opt3 = optax.adamw(1e-3)
dpo_step = jax.jit(make_train_step(make_task("dpo", beta=0.1, dropout=False), cfg, opt3))
state = create_state(0, cfg, opt3, params=base)
for s in range(STEPS):
    state, m = dpo_step(state, {k: jnp.asarray(v) for k, v in pairs.items()})
    if s in (0, STEPS - 1):
        print(f"step {s}: loss {float(m['loss']):.4f} (ln 2 = {math.log(2):.4f}), chosen reward "
              f"{float(m['chosen_reward']):+.3f}, rejected {float(m['rejected_reward']):+.3f}, margin "
              f"{float(m['reward_margin']):+.3f}, pair accuracy {float(m['accuracy']):.2f}")
