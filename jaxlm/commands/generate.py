"""``jaxlm generate PATH --prompt TEXT``: generate text from a jaxlm run directory, a Hugging Face
checkpoint directory or a GGUF file, streaming tokens to the terminal as they are produced.

    jaxlm generate runs/shakespeare --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8 --top-k 50
    jaxlm generate path/to/SmolLM2.gguf --chat --prompt "What is the capital of France?" --greedy
    jaxlm generate runs/translate --prompt "Ein Hund läuft." --beam 4          # encoder-decoder: source text

Sampling is the model's distribution (temperature 1) unless ``--greedy`` or ``--temperature/--top-k/--top-p``
say otherwise; ``--seed`` makes it reproducible; ``--beam N`` runs beam search instead (printed when done).
Generation ends at the model's end-of-sequence token(s) or after ``--max-new-tokens``.

Model and tokenizer are checked against each other: a tokenizer with more ids than the model's vocab_size
is refused; a model with more ids than its tokenizer samples only the tokenizer's ids (the others decode to
nothing). Prompt characters the tokenizer does not know (a char-level run's tokenizer maps them to
``<unk>``) are named in one warning on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jaxlm.commands import Parser, run
from jaxlm.config import ConfigError


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``jaxlm generate``."""
    ap = Parser(prog="jaxlm generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="jaxlm run directory, Hugging Face checkpoint directory or .gguf file")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (the source sentence for an encoder-decoder)")
    src.add_argument("--prompt-ids", help="prompt as comma-separated token ids (for models without a tokenizer)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0)")
    ap.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens")
    ap.add_argument("--top-p", type=float, default=None, help="sample from the nucleus of probability mass P")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beam", type=int, default=None, metavar="N", help="beam search with N beams")
    ap.add_argument("--length-penalty", type=float, default=0.6, help="GNMT alpha for --beam (default 0.6)")
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence tokens")
    ap.add_argument("--quantize", choices=("int8", "int4", "gguf"), default=None,
                    help="weight-only quantization of the matmul weights: int8 (per output channel), int4 "
                         "(--group-size values per scale), or gguf (keep a .gguf file's Q8_0/Q4_0/Q4_1 blocks)")
    ap.add_argument("--group-size", type=int, default=None,
                    help="int4 values per scale (default 128, or for a weight whose input size is not a multiple "
                         "of 128 the largest even size below 128 that divides it)")
    ap.add_argument("--quantize-embeddings", action="store_true",
                    help="with --quantize: also the token table (and an untied output head)")
    from jaxlm.config import parse_step

    ap.add_argument("--step", type=parse_step, default=None,
                    help="run directories: checkpoint step number, 'best' (by train.best_metric) or 'latest' "
                         "(default)")
    return ap


class _Printer:
    """Decode the growing list of ids and print only the new text; holds back an incomplete UTF-8 character
    (byte-level BPE can split one across tokens)."""

    def __init__(self, tok: Any, prefix: str = "", out=None):
        self.tok, self.out, self.ids, self.shown, self.prefix = tok, out or sys.stdout, [], "", prefix
        self.started = False  # anything written yet

    def add(self, token: int | None = None, final: bool = False) -> None:
        self.started = True
        if self.prefix:  # the prompt, shown once generation has started without an error
            self.out.write(self.prefix)
            self.prefix = ""
        if token is not None:
            self.ids.append(token)
        if self.tok is None:
            self.out.write("" if token is None else f"{token} ")
        else:
            text = self.tok.decode(self.ids)
            if text.endswith("\ufffd") and not final:
                return
            self.out.write(text[len(self.shown):] if text.startswith(self.shown) else text)
            self.shown = text
        self.out.flush()


def _stop_ids(loaded, ignore: bool) -> list[int]:
    if ignore:
        return []
    extra = loaded.extra or {}
    ids = list(extra.get("stop_ids") or [])  # Hugging Face / GGUF checkpoints
    eos = extra.get("eos_id", (extra.get("specials") or {}).get("eos"))  # ... and jaxlm run directories
    if eos is not None:
        ids.append(int(eos))
    return sorted(set(ids))


def _encode(args, loaded) -> list[int]:
    from jaxlm import pretrained

    if args.prompt_ids is not None:
        try:
            return [int(t) for t in args.prompt_ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise ValueError(f"--prompt-ids {args.prompt_ids!r}: give comma-separated integers, e.g. 1,2,3.") from None
    tok = loaded.tokenizer
    if tok is None:
        raise ValueError(f"{args.path} has no tokenizer: pass the prompt as token ids with --prompt-ids 1,2,3.")
    # jaxlm runs train on text encoded without special tokens; HF tokenizers add what their models expect
    text, special = args.prompt, pretrained.kind(args.path) != "run"
    if args.chat:
        template = (loaded.extra or {}).get("chat_template")
        if not template:
            raise ValueError(f"{args.path} has no chat template: drop --chat.")
        from jaxlm.data.chat import apply_chat_template, template_kwargs  # also what SFT data renders with

        names = template_kwargs(tok, loaded.extra)
        text = apply_chat_template(template, [{"role": "user", "content": args.prompt}], **names)
        special = False  # the template already holds the special tokens
    return tok.encode(text, add_special_tokens=special).ids


def _vocab_limit(args, loaded) -> int | None:
    """Check the model against its tokenizer and warn once about prompt characters the tokenizer does not
    know. A tokenizer with more ids than the model's vocab_size belongs to another model: refused. A model
    with more ids than its tokenizer (a padded table, or a run whose preset vocab_size exceeds its char
    tokenizer) is restricted to the tokenizer's ids: the others decode to nothing. Returns that limit."""
    from jaxlm.data import text

    tok, vocab = loaded.tokenizer, loaded.config.vocab_size
    if tok is None:
        return None
    n = text.id_bound(tok)
    if n > vocab:
        raise ValueError(f"the tokenizer of {args.path} has {n} ids but the model's vocab_size is {vocab}: they "
                         f"do not belong together; use the tokenizer the model was trained with.")
    if args.prompt is not None:
        unknown = text.unknown_chars(tok, args.prompt)
        if unknown:
            print(f"jaxlm generate: warning: the tokenizer does not know {', '.join(map(repr, unknown))} in the "
                  f"prompt; {'it becomes' if len(unknown) == 1 else 'they become'} the unknown token (the model "
                  f"never saw {'it' if len(unknown) == 1 else 'them'} in training): rephrase the prompt without "
                  f"{'it' if len(unknown) == 1 else 'them'} for a faithful continuation.", file=sys.stderr)
    return n


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return run("jaxlm generate", lambda: _generate(args))


def _generate(args: argparse.Namespace) -> int:
    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p") if getattr(args, k) is not None}
    if args.greedy and sampling:
        raise ConfigError(f"--greedy takes the most likely token, so "
                          f"{', '.join('--' + k.replace('_', '-') for k in sampling)} would be ignored: drop one "
                          f"or the other.")
    if args.beam is not None and (sampling or args.greedy):
        raise ConfigError("--beam runs beam search, which does not sample: drop --greedy/--temperature/--top-k/"
                          "--top-p.")

    from jaxlm import pretrained
    from jaxlm.generate import beam_search, stream

    if args.step is not None and pretrained.kind(args.path) != "run":
        raise ValueError(f"--step picks a checkpoint of a jaxlm run directory; {args.path} is not one: "
                         f"drop --step.")
    kw = {"step": args.step} if args.step is not None else {}
    if args.quantize is not None:
        loaded = pretrained.load_quantized(args.path, args.quantize, args.group_size, args.quantize_embeddings,
                                           report=lambda m: print(f"jaxlm generate: {m}", file=sys.stderr), **kw)
    else:
        loaded = pretrained.load(args.path, **kw)
    ids = _encode(args, loaded)
    limit = _vocab_limit(args, loaded)
    stop = _stop_ids(loaded, args.ignore_eos)
    # a decoder's continuation follows the prompt, so show the prompt first
    echo = args.prompt is not None and not args.chat and loaded.family.KIND == "decoder"
    printer = _Printer(loaded.tokenizer, prefix=args.prompt if echo else "")
    try:
        if args.beam is not None:
            out = beam_search(loaded.params, loaded.config, [ids], beam_size=args.beam,
                              max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty,
                              stop_tokens=stop, vocab_limit=limit)
            for t in out.tokens[0]:
                printer.add(t)
        else:
            for t in stream(loaded.params, loaded.config, ids, max_new_tokens=args.max_new_tokens,
                            greedy=args.greedy, stop_tokens=stop, seed=args.seed, vocab_limit=limit,
                            **({"temperature": 1.0} | sampling)):
                printer.add(t)
        printer.add(final=True)
    except BaseException:
        if printer.started:  # end the streamed line, so the error is a line of its own in a terminal
            print(flush=True)
        raise
    print()
    return 0
