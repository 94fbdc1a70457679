"""Flags and positionals (paths, ``key=value`` overrides) mix in any order in every `jaxlm` sub-command:
``jaxlm eval RUN --step best key=value`` parses like ``jaxlm eval RUN key=value --step best``."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from jaxlm import cli
from jaxlm.commands import Parser
from tests.train.conftest import EXPERIMENT, write_corpus

# command -> (positionals in order, flags each with its value); parsing only, nothing runs
CASES = {
    "train": (["exp.py", "train.steps=3", "model.n_layers=2"], [["--run-dir", "runs/x"], ["--quiet"]]),
    "eval": (["runs/x", "data.eval_path=other.txt", "train.eval_batches=5"], [["--step", "best"], ["--json"]]),
    "plan": (["gpt2-tiny", "train.batch_size=4", "mesh.fsdp=2"], [["--topology", "cpu:8"], ["--analytic"]]),
    "generate": (["runs/x"], [["--prompt", "hi"], ["--step", "best"], ["--quantize", "int4"]]),
    "harness": (["model.gguf"], [["--tasks", "a,b"], ["--limit", "5"]]),
}


def _orders(pos: list[str], flags: list[list[str]]) -> list[tuple[str, ...]]:
    """The same arguments in several orders: positionals first, flags first, and interleaved both ways."""
    flat = [a for f in flags for a in f]
    mixed, mixed2 = [], list(flags[0])
    for i, p in enumerate(pos):  # P0 F0 P1 F1 ...  and  F0 P0 P1 F1 P2 F2 ...
        mixed += [p, *(flags[i] if i < len(flags) else [])]
        mixed2 += [p, *(flags[i] if 0 < i < len(flags) else [])]
    mixed += [a for f in flags[len(pos):] for a in f]
    mixed2 += [a for f in flags[max(len(pos), 1):] for a in f]
    return list(dict.fromkeys(map(tuple, [pos + flat, flat + pos, mixed, mixed2])))


def _parser(command: str):
    return importlib.import_module(cli.COMMANDS[command][0]).parser()


def test_every_command_parses_with_the_shared_parser():
    """A new sub-command gets the intermixed parsing by using :class:`jaxlm.commands.Parser`."""
    for command in cli.COMMANDS:
        assert isinstance(_parser(command), Parser), command
    assert set(CASES) | {"models", "convert"} == set(cli.COMMANDS)  # models and convert take no positionals


@pytest.mark.parametrize("command", sorted(CASES))
def test_flags_before_and_after_positionals_parse_the_same(command):
    pos, flags = CASES[command]
    orders = _orders(pos, flags)
    assert len(orders) >= 3  # distinct orders, a flag before a positional among them
    spaces = [vars(_parser(command).parse_args(list(o))) for o in orders]
    for o, ns in zip(orders, spaces, strict=True):
        assert ns == spaces[0], o
    if len(pos) > 1:
        assert spaces[0]["overrides"] == pos[1:]
    assert spaces[0].get("step", "best") == "best"


def test_no_overrides_is_an_empty_list_and_errors_stay_one_line(capsys):
    assert _parser("eval").parse_args(["--json", "runs/x"]).overrides == []
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "runs/x", "train.eval_batches=2", "--bogus"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("jaxlm eval: error: unrecognized arguments: --bogus; see jaxlm eval "
                                       "--help\n")
    with pytest.raises(SystemExit):
        cli.main(["eval", "--step", "best"])  # the optional overrides are not named as missing
    assert capsys.readouterr().err == ("jaxlm eval: error: the following arguments are required: run_dir; see "
                                       "jaxlm eval --help\n")


def test_eval_step_best_then_an_override_on_a_trained_run(tmp_path: Path, capsys, monkeypatch):
    """The issue's command line end to end: a tiny run trained with its overrides after --run-dir, then
    ``jaxlm eval RUN --step best train.eval_batches=1`` evaluates the best checkpoint on one batch."""
    monkeypatch.setenv("JAXLM_DEBUG", "")
    exp = tmp_path / "tiny.py"
    exp.write_text(EXPERIMENT.format(path=str(write_corpus(tmp_path / "corpus.txt"))))
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(exp), "--run-dir", str(run_dir), "train.steps=4", "--quiet",
                     "train.eval_every=2", "train.checkpoint_every=2"]) == 0
    capsys.readouterr()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    best = min(evals, key=lambda r: r["eval_loss"])

    def eval_json(*argv: str) -> dict:
        assert cli.main(["eval", str(run_dir), *argv]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    after = eval_json("--step", "best", "train.eval_batches=1", "--json")
    before = eval_json("train.eval_batches=1", "--json", "--step", "best")
    assert after == before and after["step"] == best["step"]
    full = eval_json("--json", "--step", "best")  # the run's own train.eval_batches=2
    assert after["eval_tokens"] * 2 == full["eval_tokens"]  # the override was applied: one batch, not two
    assert full["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-5)
