"""jaxlm as a model backend of EleutherAI's lm-evaluation-harness (the ``lm-eval`` package).

:class:`JaxLM` implements lm-eval's ``TemplateLM`` for any decoder-only family jaxlm loads (a jaxlm run
directory, a Hugging Face directory or a GGUF file, through :func:`jaxlm.pretrained.load`):

- ``loglikelihood`` (multiple choice): the summed log-probability of each continuation after its context
  and whether it is the greedy continuation. lm-eval tokenizes the pair (``_encode_pair``: trailing spaces
  of the context move to the continuation) exactly as for its own ``hf`` backend, so the two backends score
  the same token sequences;
- ``loglikelihood_rolling`` (perplexity): the document cut into lm-eval's disjoint rolling windows of
  ``max_length`` tokens, the first predicted from the prefix token;
- ``generate_until``: greedy decoding (:func:`jaxlm.generate.generate`, a KV cache) cut at the request's
  ``until`` strings.

Requests are scored in batches of ``batch_size`` rows, right-padded to a multiple of ``pad_to`` tokens
(a causal model's padding after a row's last token cannot change that row's logits; few lengths means few
compilations), longest first as lm-eval's own backends order them. Registered with lm-eval as ``jaxlm``
(``lm_eval --model jaxlm --model_args pretrained=PATH``); ``jaxlm harness`` runs it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import lm_eval.models  # noqa: F401  (lm-eval's own backends, registered before ours so "hf" stays known)
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from jaxlm.data import text


@register_model("jaxlm")
class JaxLM(TemplateLM):
    """lm-eval backend over a jaxlm-loaded decoder (see the module docstring).

    ``pretrained``: a run directory, HF directory or ``.gguf`` file (or a :class:`jaxlm.pretrained.Loaded`);
    ``batch_size``: rows per forward pass; ``max_length``: tokens per row (default: the model's
    ``max_len``); ``max_gen_toks``: default generation length; ``add_bos_token``: prepend BOS to every
    encoding (LLaMA-style models trained with it)."""

    def __init__(self, pretrained: Any, batch_size: int | str = 8, max_length: int | None = None,
                 max_gen_toks: int = 256, add_bos_token: bool = False, pad_to: int = 16, dtype: str | None = None,
                 **_: Any):
        super().__init__()
        from jaxlm.pretrained import Loaded, load

        m = pretrained if isinstance(pretrained, Loaded) else load(str(pretrained), **({"dtype": dtype} if dtype else {}))
        if m.tokenizer is None:
            raise ValueError(f"{pretrained}: no tokenizer comes with this model; lm-eval needs one to encode text.")
        if "causal_lm" not in getattr(m.family, "TASKS", ()):
            raise ValueError(f"{pretrained}: lm-eval's jaxlm backend scores decoder-only language models (families "
                             f"with the causal_lm task); this is a {getattr(m.config, 'family', '?')} model.")
        self.m, self.tok = m, m.tokenizer
        self.batch_size = 8 if batch_size in ("auto", None) else int(batch_size)
        self._max_length = int(max_length or getattr(m.config, "max_len", 2048))
        self.max_gen_toks, self.add_bos_token, self.pad_to = int(max_gen_toks), bool(add_bos_token), int(pad_to)
        sp = text.special_ids(self.tok)
        self._eot = sp["eos"] if sp["eos"] is not None else sp["pad"]
        self._prefix = sp["bos"] if sp["bos"] is not None else self._eot
        self._bos = sp["bos"]
        cfg, fam = m.config, m.family

        @jax.jit
        def token_scores(params, tokens, targets):
            """log p(targets[:, t] | tokens[:, :t+1]) and whether it is the argmax, both [B, T]: gathered here
            so that only [B, T] (not [B, T, vocab]) float32 crosses back to the host."""
            logits = fam.apply(params, tokens, cfg)
            if isinstance(logits, dict):
                logits = logits["logits"]
            lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
            return (jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0],
                    jnp.argmax(lp, axis=-1) == targets)

        self._token_scores = token_scores

    # -- what TemplateLM asks for --------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_: Any) -> list[int]:
        ids = self.tok.encode(string, add_special_tokens=False).ids
        if (add_special_tokens or (add_special_tokens is None and self.add_bos_token)) and self._bos is not None:
            ids = [self._bos, *ids]
        return ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    # -- scoring ---------------------------------------------------------------------------------------------
    def _forward(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """For right-padded rows of ``len(row) = L + 1`` tokens: ``(logp, greedy)``, each ``[len(rows), T]``
        (T a multiple of ``pad_to``), position t scoring token t + 1 of the row given tokens 0..t."""
        T = max(len(r) for r in rows) - 1
        T = -(-T // self.pad_to) * self.pad_to
        n = len(rows)
        arr = np.zeros((self.batch_size if n <= self.batch_size else n, T + 1), np.int32)  # one batch shape
        for i, r in enumerate(rows):
            arr[i, :len(r)] = r
        lp, greedy = self._token_scores(self.m.params, jnp.asarray(arr[:, :-1]), jnp.asarray(arr[:, 1:]))
        return np.asarray(lp)[:n], np.asarray(greedy)[:n]

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is greedy) per (context, continuation) ids; the
        row is the last ``max_length + 1`` tokens of context + continuation, less its last token."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            rows, conts = [], []
            for i in idx:
                ctx, cont = pairs[i]
                rows.append((list(ctx) + list(cont))[-(self.max_length + 1):])
                conts.append(len(cont))
            lp, greedy = self._forward(rows)
            for j, i in enumerate(idx):
                n, L = conts[j], len(rows[j]) - 1
                # positions L-n .. L-1 predict the continuation's n tokens
                out[i] = (float(lp[j, L - n:L].sum()), bool(greedy[j, L - n:L].all()))
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_: Any) -> list[tuple[float, bool]]:
        res = self._score([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), r in zip(requests, res):
            self.cache_hook.add_partial("loglikelihood", key, r)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for k, (string,) in enumerate(req.args for req in requests):
            for w in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(w)
                owner.append(k)
        scores = self._score(windows)
        out = [0.0] * len(requests)
        for k, (s, _) in zip(owner, scores):
            out[k] += s
        for req, s in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, s)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from jaxlm.generate import generate

        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            kw = dict(req.args[1])
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            n = int(kw.get("max_gen_toks", self.max_gen_toks))
            groups.setdefault((tuple(until), n), []).append(i)
        for (until, n), idx in groups.items():
            stops = list(until) + [self.tok_decode([self.eot_token_id])]
            for b in range(0, len(idx), self.batch_size):
                chunk = idx[b:b + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-(self.max_length - n):] or [self.prefix_token_id]
                           for i in chunk]
                gen = generate(self.m.params, self.m.config, prompts, max_new_tokens=n, greedy=True,
                               stop_tokens=[self.eot_token_id],
                               vocab_limit=min(text.id_bound(self.tok), self.m.config.vocab_size))
                for i, toks in zip(chunk, gen.tokens):
                    s = self.tok_decode([t for t in toks if t != self.eot_token_id])
                    for u in stops:
                        if u and u in s:
                            s = s.split(u)[0]
                    out[i] = s
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), s)
        return out  # type: ignore[return-value]


def evaluate(pretrained: Any, tasks: list[str], *, include_path: str | None = None, limit: int | float | None = None,
             num_fewshot: int | None = None, batch_size: int = 8, log_samples: bool = False,
             **model_args: Any) -> dict:
    """Run lm-eval's ``simple_evaluate`` on ``tasks`` with :class:`JaxLM` over ``pretrained``; tasks may come
    from ``include_path`` (a folder of task YAML files). An unknown task name raises a ValueError that
    says how to list the tasks."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=include_path) if include_path else TaskManager()
    check_tasks(tasks, tm, include_path)
    lm = JaxLM(pretrained, batch_size=batch_size, **model_args)
    return simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                           log_samples=log_samples, batch_size=batch_size)


def check_tasks(tasks: list[str], tm, include_path: str | None = None) -> None:
    """ValueError naming the tasks lm-eval does not know (with the closest names) and how to list them."""
    from jaxlm.config import closest

    known = set(tm.all_tasks)
    bad = [t for t in tasks if t not in known]
    if bad:
        hint = closest(bad[0], sorted(known))
        raise ValueError(f"unknown lm-eval task(s) {bad}{hint}; list the tasks with `lm-eval ls tasks`"
                         f"{' --include_path ' + include_path if include_path else ''} (or `lm-eval ls groups`), "
                         f"or give a folder of task YAML files with --include-path DIR.")


__all__ = ["JaxLM", "check_tasks", "evaluate"]
