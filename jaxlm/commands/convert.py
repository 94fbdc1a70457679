"""``jaxlm convert``: Hugging Face / GGUF checkpoints to jaxlm, and jaxlm models to Hugging Face.

    jaxlm convert --from-hf path/to/hf_dir --to converted/          # or a hub id when online
    jaxlm convert --from-gguf SmolLM2-135M-Instruct.Q4_1.gguf --to converted/   (--from-hf also takes .gguf)
    jaxlm convert --to-hf runs/my_run --out hf_export/               # transformers.from_pretrained(hf_export/)
    jaxlm convert --to-hf runs/my_lora_run --out adapter/ --adapters # peft.PeftModel.from_pretrained(model, adapter/)

``--to DIR`` writes a jaxlm params directory (config.json with the jaxlm Config, params.safetensors in jaxlm
layout, tokenizer.json, extra.json) that ``jaxlm generate``, ``jaxlm eval`` and
``jaxlm.pretrained.load`` read. ``--to-hf`` takes anything ``jaxlm.pretrained.load`` reads (a run directory,
a params directory, a GGUF file, an HF directory) and writes config.json + model.safetensors + tokenizer files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxlm.commands import Parser, run


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``jaxlm convert``."""
    ap = Parser(prog="jaxlm convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="SRC", help="Hugging Face directory, hub id or .gguf file to import")
    src.add_argument("--from-gguf", metavar="FILE", help="llama-family .gguf file to import (dequantised)")
    src.add_argument("--to-hf", metavar="RUN_DIR", help="jaxlm run/params directory (or any loadable model) to export")
    ap.add_argument("--to", metavar="DIR", help="output jaxlm params directory (with --from-hf / --from-gguf)")
    ap.add_argument("--out", metavar="DIR", help="output Hugging Face directory (with --to-hf)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="parameter dtype of the imported model (default float32)")
    ap.add_argument("--force", action="store_true", help="write into a non-empty output directory")
    ap.add_argument("--adapters", action="store_true",
                    help="with --to-hf on a LoRA run (finetune.lora): write its adapters as a PEFT directory "
                         "(adapter_config.json + adapter_model.safetensors) instead of the merged model")
    ap.add_argument("--quantize", choices=("int8", "int4", "gguf"), default=None,
                    help="weight-only quantization of the matmul weights: int8 (per output channel), int4 "
                         "(--group-size values per scale), or gguf (keep a .gguf file's Q8_0/Q4_0/Q4_1 blocks)")
    ap.add_argument("--group-size", type=int, default=None,
                    help="int4 values per scale (default 128, or for a weight whose input size is not a multiple "
                         "of 128 the largest even size below 128 that divides it)")
    ap.add_argument("--quantize-embeddings", action="store_true",
                    help="with --quantize: also the token table (and an untied output head)")
    return ap


def _check_out(path: str | None, flag: str, force: bool) -> Path:
    if not path:
        raise SystemExit(f"jaxlm convert: give the output directory with {flag} DIR.")
    out = Path(path)
    if out.is_file():
        raise SystemExit(f"jaxlm convert: {out} is a file; {flag} needs a directory.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SystemExit(f"jaxlm convert: {out} is not empty; choose a new directory or pass --force.")
    return out


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    # exit code 1 for every error, as before; ImportError: an optional dependency missing; KeyError: a
    # tensor the checkpoint lacks
    return run("jaxlm convert", lambda: _convert(args), also=(ImportError, KeyError), code=1)


def _export_adapters(loaded, src: str, out: Path) -> int:
    """A LoRA run's adapters as a PEFT adapter directory for the base model's Hugging Face export."""
    from jaxlm import params as P
    from jaxlm.finetune import lora, peft

    if "adapters" not in loaded.extra:
        raise ValueError(f"{src} holds no LoRA adapters (a run trained with finetune.lora.rank=N has them); drop "
                         f"--adapters to export the model itself.")
    full = sorted(k for k in P.flatten(loaded.extra["adapters"]) if not lora.is_adapter(k))
    if full:
        raise ValueError(f"{src} also trains {full} in full, which a PEFT LoRA directory does not hold; drop "
                         f"--adapters to export the merged model.")
    base = loaded.extra.get("lora_base", {}).get("run", "")
    peft.export(loaded.extra["adapters"], loaded.config, loaded.extra["lora"], out, base_model=base)
    print(f"wrote PEFT adapter directory {out}: rank {loaded.extra['lora'].rank} on "
          f"{len(lora.targets(loaded.config, loaded.extra['lora']))} projections of {base or 'the base'}; load it "
          f"with peft.PeftModel.from_pretrained onto the base model's Hugging Face export (jaxlm convert --to-hf "
          f"{base or 'BASE'} --out DIR)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from jaxlm import params as P
    from jaxlm import pretrained
    from jaxlm.convert import hf, native

    if args.to_hf:
        out = _check_out(args.out, "--out", args.force)
        if args.quantize is not None:
            raise ValueError("--quantize applies to --from-hf / --from-gguf; Hugging Face exports are float: drop it.")
        loaded = pretrained.load(args.to_hf)
        if args.adapters:
            return _export_adapters(loaded, args.to_hf, out)
        from jaxlm.nn import quant

        if quant.describe(loaded.params):  # a quantized params directory exports its dequantised weights
            import dataclasses

            loaded = dataclasses.replace(loaded, params=quant.dequantize(loaded.params))
        hf.save(loaded, out)
        what = "Hugging Face checkpoint"
    else:
        src = args.from_hf or args.from_gguf
        if args.adapters:
            raise ValueError("--adapters exports a LoRA run's adapters: use it with --to-hf RUN_DIR --out DIR.")
        out = _check_out(args.to, "--to", args.force)
        if args.from_gguf and not str(src).endswith(".gguf"):
            raise ValueError(f"--from-gguf {src}: expected a .gguf file.")
        if args.quantize is not None:  # written quantized: loads back as QArrays, without re-quantizing
            loaded = pretrained.load_quantized(src, args.quantize, args.group_size, args.quantize_embeddings,
                                               report=lambda m: print(f"jaxlm convert: {m}", file=sys.stderr),
                                               dtype=args.dtype)
        else:
            loaded = pretrained.load(src, dtype=args.dtype)
        native.save(loaded, out)
        what = "jaxlm params directory"
    name = type(loaded.config).family
    tok = "with" if loaded.tokenizer is not None else "without"
    q = f", quantized {args.quantize}" if args.quantize and not args.to_hf else ""
    print(f"wrote {what} {out}: {name}, {P.count(loaded.params):,} parameters{q}, {tok} tokenizer")
    return 0
