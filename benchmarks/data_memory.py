"""Peak memory of the data pipeline as the corpus grows: in memory (``data.streaming=false``) vs streaming.

For corpus sizes 1x and 10x (a generated jsonl corpus of word documents; 1x = ``--mb`` MB), each mode runs
in its own subprocess: build the run's data (:func:`jaxlm.data.pipeline.prepare`, causal_lm, a character
tokenizer given as a file so both modes tokenize the same way) and cut ``--batches`` training batches of
16 x 256 tokens. Reported: the subprocess's peak RSS (``ru_maxrss``) and its wall time. Records the run (unless
--no-write): its table replaces the ``data_memory.py`` section of benchmarks/RESULTS.md and its full output is
appended to benchmarks/HISTORY.md (benchmarks/_results.py).

    python benchmarks/data_memory.py [--mb 2] [--batches 50] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang in old green trees near quiet "
         "water under a bright sky").split()


def make_corpus(path: Path, mb: float, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    target, n = int(mb * 1e6), 0
    with path.open("w") as f:
        while n < target:
            doc = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(50, 400))))
            line = json.dumps({"text": doc}) + "\n"
            f.write(line)
            n += len(line)


def child(corpus: str, tok: str, streaming: bool, batches: int) -> None:
    import jax  # noqa: F401  (both modes pay the same imports: the streaming path asks jax for the process index)

    from jaxlm.data import pipeline
    from jaxlm.train import config as C

    t0 = time.perf_counter()
    from jaxlm.models import gpt2

    run = C.resolve(C.RunConfig(model=gpt2.Config(vocab_size=64, max_len=256, d_model=32, n_heads=2, n_layers=1,
                                                  d_ff=64),
                                train=C.TrainConfig(batch_size=16, eval_batches=2),
                                data=C.DataConfig(path=corpus, tokenizer=tok, seq_len=256, eval_fraction=0.0,
                                                  streaming=streaming)))
    prep = pipeline.prepare(run, None)
    for s in range(batches):
        prep.train.batch(s, 16)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    print(json.dumps({"peak_rss_mib": peak, "seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=2.0)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="print only; do not record in RESULTS.md / HISTORY.md")
    ap.add_argument("--child", nargs=4, metavar=("CORPUS", "TOK", "STREAMING", "BATCHES"))
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.child[2] == "1", int(a.child[3]))
        return
    from jaxlm.data import text

    rows = []
    with tempfile.TemporaryDirectory() as d:
        tok = text.char_tokenizer(" ".join(WORDS))
        tok.save(str(Path(d) / "tok.json"))
        for scale in (1, 10):
            corpus = Path(d) / f"corpus_{scale}x.jsonl"
            make_corpus(corpus, a.mb * scale)
            size = corpus.stat().st_size / 1e6
            for streaming in (False, True):
                out = subprocess.run([sys.executable, __file__, "--child", str(corpus), str(Path(d) / "tok.json"),
                                      "1" if streaming else "0", str(a.batches)],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append((scale, size, "streaming" if streaming else "in memory", r["peak_rss_mib"],
                             r["seconds"]))
                print(rows[-1], flush=True)
    table = ["| corpus | size (MB) | mode | peak RSS (MiB) | wall (s) |", "|---|---|---|---|---|"]
    table += [f"| {s}x | {mb:.1f} | {m} | {rss:.0f} | {sec:.1f} |" for s, mb, m, rss, sec in rows]
    from _results import machine, now, record  # benchmarks/_results.py (this folder is on sys.path)

    run = (f"- generated jsonl corpus of word documents, causal_lm, character tokenizer, seq_len 256, {a.batches} "
           f"batches of 16; peak RSS of a subprocess that builds the run's data and cuts the batches (the Python/JAX/"
           f"datasets imports are part of it); {now()}; {machine()}, load average {os.getloadavg()[0]:.1f} at the "
           f"end; `python benchmarks/data_memory.py --mb {a.mb} --batches {a.batches}`")
    text = "\n".join(table) + "\n\n" + run
    print(text)
    if not a.no_write:
        record("data_memory.py", text, text)


if __name__ == "__main__":
    main()
