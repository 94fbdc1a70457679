"""``jaxlm harness MODEL --tasks T1,T2 [...]``: EleutherAI's lm-evaluation-harness with jaxlm as the model.

MODEL is a jaxlm run directory, a Hugging Face directory or a GGUF file (any decoder-only family); the
tasks are lm-eval's (``lm-eval ls tasks`` lists them) or task YAML files in ``--include-path DIR``. The
backend is :class:`jaxlm.interop.lm_eval.JaxLM` (loglikelihood, loglikelihood_rolling, generate_until,
batched with padding). Prints lm-eval's results table; ``--output FILE`` writes the results as JSON (with
``--log-samples`` each request's scores too). Needs the ``lm-eval`` package (``pip install jaxlm[eval]``).

    jaxlm harness runs/gpt2 --tasks lambada_openai --limit 200
    jaxlm harness model.gguf --tasks sst2_choice --include-path my_tasks/ --batch-size 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxlm.commands import Parser, run


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``jaxlm harness``."""
    p = Parser(prog="jaxlm harness", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a jaxlm run directory, Hugging Face directory or .gguf file")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", default=None, help="a folder of extra lm-eval task YAML files")
    p.add_argument("--limit", type=float, default=None, help="at most this many documents per task (or a fraction)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass (padded to one shape)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per row (default: the model's max_len)")
    p.add_argument("--add-bos-token", action="store_true", help="prepend BOS to every encoding")
    p.add_argument("--log-samples", action="store_true", help="keep every request's scores in --output")
    p.add_argument("--output", default=None, help="write the results JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)

    def work() -> int:
        try:
            from jaxlm.interop import lm_eval as backend
        except ImportError as e:
            raise ImportError(f"jaxlm harness needs lm-eval ({e}); pip install 'jaxlm[eval]'.") from None
        from lm_eval.utils import make_table

        tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
        limit = None if a.limit is None else (int(a.limit) if a.limit >= 1 else a.limit)
        res = backend.evaluate(a.model, tasks, include_path=a.include_path, limit=limit, num_fewshot=a.num_fewshot,
                               batch_size=a.batch_size, log_samples=a.log_samples, max_length=a.max_length,
                               add_bos_token=a.add_bos_token)
        print(make_table(res))
        if a.output:
            Path(a.output).write_text(json.dumps(res, indent=2, default=str) + "\n")
        return 0

    return run("jaxlm harness", work, also=(ImportError,))
