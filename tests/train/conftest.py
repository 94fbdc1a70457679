"""A tiny, fast experiment for the training tests: a generated word corpus, character tokenizer, gpt2-tiny."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang in old green trees "
         "near quiet water under a bright sky").split()


def write_corpus(path: Path, n_words: int = 6000, seed: int = 0) -> Path:
    """Text with structure a tiny model learns quickly: words from a small list, lines of 12 words."""
    rng = np.random.default_rng(seed)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n_words)]
    path.write_text("\n".join(" ".join(words[i:i + 12]) for i in range(0, n_words, 12)) + "\n")
    return path


def write_sentiment_tsv(path: Path, n: int = 300, seed: int = 0) -> Path:
    """An SST-2-shaped tsv (``sentence``, ``label``) whose words give the label away: 4 sentiment words (good
    ... / bad ...) and 3 neutral ones per sentence, shuffled."""
    rng = np.random.default_rng(seed)
    pos, neg = "good great fine lovely superb".split(), "bad awful poor dull terrible".split()
    lines = ["sentence\tlabel"]
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(pos if y else neg, 4)) + list(rng.choice(["the", "a", "film", "plot"], 3))
        lines.append(" ".join(rng.permutation(words)) + f"\t{y}")
    path.write_text("\n".join(lines) + "\n")
    return path


EXPERIMENT = '''
from jaxlm.models import gpt2
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig


def config() -> RunConfig:
    return RunConfig(
        model=gpt2.Config(vocab_size=64, max_len=32, d_model=32, n_heads=2, n_layers=1, d_ff=64),
        train=TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, log_every=1, eval_every=0,
                          eval_batches=2, checkpoint_every=10, progress=False, tensorboard=False, plot=False),
        data=DataConfig(path={path!r}, tokenizer="char", seq_len=32, eval_fraction=0.1),
    )
'''


@pytest.fixture
def tiny_experiment(tmp_path: Path) -> Path:
    """An experiment file (and its corpus) in ``tmp_path``."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    exp = tmp_path / "tiny.py"
    exp.write_text(EXPERIMENT.format(path=str(corpus)))
    return exp


@pytest.fixture(scope="session")
def step_cache():
    """Compiled steps shared by this session's in-process ``train()`` calls: a configuration trained again
    (resume tests, runs differing only in loop settings) reuses them instead of compiling again."""
    from jaxlm.train.setup import StepCache

    return StepCache()


_CACHE: dict[str, str] = {}


@pytest.fixture(scope="session", autouse=True)
def _xla_cache(tmp_path_factory):
    """A persistent XLA compilation cache shared by this session's `jaxlm` subprocesses: the same
    program run again (the resume tests) loads its executables instead of compiling them."""
    _CACHE["dir"] = str(tmp_path_factory.mktemp("xla-cache"))


def cli_env(**extra: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    if "dir" in _CACHE:
        env |= {"JAX_COMPILATION_CACHE_DIR": _CACHE["dir"], "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m jaxlm.cli ARGS`` from the repository root, captured."""
    e = cli_env(**(env or {}))
    return subprocess.run([sys.executable, "-m", "jaxlm.cli", *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=timeout)
