"""Multiple choice scored by the log-likelihood of each option's text after the prompt.

Columns: `prompt`, `choices` (one column holding a list of option texts, or a list of columns
holding one option each), `answer` (the correct option: a column holding a 0-based index or a
letter, or a constant index / letter: `answer: 0`) and optionally `negative` (the option the
train pairs contrast with, e.g. a biased answer; default: the option after the correct one).
Options are shown to the model as lettered lines either through `{options}` in the prompt
template or because the prompt already has lines `A) ...` / `(A) ...`; then, with `balance:
swap`, every item is scored in every cyclic order of its options and per-letter scores are
returned, so moving a position prior cannot win.

Per item: log-likelihood of `" " + option` for every option (`loglik: sum` over its tokens or
`mean` per token); accuracy = the correct option has the highest; probability = softmax over the
options' log-likelihoods at the correct one. The objective value is the mean correct-option
probability (smooth on a small split); accuracy is reported beside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.core.chance import chance_items
from hpo.core.columns import is_constant, option_index, option_texts, row_option
from hpo.core.config import TaskConfig
from hpo.core.errors import UserError
from hpo.core.progress import progress
from hpo.core.stats import spread
from hpo.model.batching import length_sorted_batches, pad_left
from hpo.model.kv import output_cache, scratch_cache, with_cache
from objectives._base import BaseObjective, ContrastivePair, Reporter, Row, ScoreResult
from objectives.prompts import render_prompt, template_fields
from objectives.train_pairs import source_pairs

LETTERED = re.compile(r"^(?P<indent>[ \t]*)\(?(?P<letter>[A-Z])\)(?P<text>.*)$", re.MULTILINE)


@dataclass(frozen=True)
class McVariant:
    """One item in one option order: its prompt, the option texts at each letter, the answer."""

    item: int
    prompt: str
    options: tuple[str, ...]
    letters: tuple[str, ...]
    correct: int
    wrong: int


@dataclass
class PreparedMc:
    """A split tokenized once: variants, prompt and option token ids, length-sorted batches."""

    variants: list[McVariant]
    prompt_ids: list[list[int]]
    option_ids: list[list[list[int]]]
    batches: list[list[int]]
    n_items: int
    # `PreparedSplit`'s other fields: no prefix (options run on the prompt's own KV cache), no
    # fluency reference, no unsteered result kept.
    prefix: list[Any] | None = None
    reference: dict[str, float] = field(default_factory=dict)
    baseline: ScoreResult | None = None

    @property
    def token_ids(self) -> list[list[int]]:
        """The prompts' token ids (`PreparedSplit`)."""
        return self.prompt_ids


class MultipleChoice(BaseObjective):
    """Objective kind `multiple_choice` (see the module docstring)."""

    kind = "multiple_choice"
    forward_only = False  # options run on the prompt's own KV cache
    required_columns = ("prompt", "choices", "answer")
    prompt_fields = frozenset({"options"})
    lists_columns = True  # `choices` may list one column per option

    @classmethod
    def check_task(cls, cfg: TaskConfig) -> None:
        """A constant answer (or negative) must be a valid option index or letter."""
        choices = cfg.columns.get("choices")
        if isinstance(choices, list):
            for role in ("answer", "negative"):
                if role in cfg.columns and is_constant(role, cfg.columns[role], choices):
                    option_index(cfg.columns[role], len(choices), f"task.columns.{role}")

    @classmethod
    def check_rows(cls, cfg: TaskConfig, rows: Sequence[Row]) -> None:
        """Every row's options and its answer (and negative) option index."""
        for row in rows:
            n = len(option_texts(row, cfg.columns))
            for role in ("answer", "negative"):
                if role in cfg.columns and (
                    role == "answer" or row.get(cfg.columns[role], 0) is not None
                ):
                    row_option(row, cfg.columns, role, n)

    @property
    def attribution(self) -> tuple[str, str]:
        """The options' log-odds, their tokens reduced as the score reduces them."""
        return ("loglik", self.cfg.objective.loglik)

    def bias_cause(self) -> str:
        """The option length (under `loglik`) or the option order."""
        loglik = self.cfg.objective.loglik
        other = "sum" if loglik == "mean" else "mean"
        favours = "long" if loglik == "mean" else "short"
        return (
            f"likely the option length (task.objective.loglik={loglik} favours {favours} "
            f"options; try task.objective.loglik={other}) or the option order "
            "(task.objective.balance=swap with {options} in task.prompt_template scores every "
            "order)"
        )

    def __init__(self, cfg: TaskConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.direction = cfg.objective.direction
        self.shows_options = "options" in template_fields(cfg.prompt_template)

    def _orders(self, text: str, choices: list[str]) -> list[tuple[str, list[int]]]:
        """(prompt text, option index at each letter) for every order to score.

        Options already in the prompt as lettered lines are rewritten from `choices` in each
        order, so the text shown always matches the text scored.
        """
        n = len(choices)
        lines = list(LETTERED.finditer(text))
        lettered = self.shows_options or len(lines) == n
        if not lettered or self.cfg.objective.balance == "none":
            return [(text, list(range(n)))]
        orders = []
        for shift in range(n):
            order = [(i - shift) % n for i in range(n)]
            if self.shows_options:
                orders.append((text, order))
                continue
            out, last = [], 0
            for i, m in enumerate(lines):
                out += [text[last : m.start("text")], " ", choices[order[i]]]
                last = m.end()
            orders.append(("".join(out) + text[last:], order))
        return orders

    def variants(self, rows: Sequence[Row]) -> list[McVariant]:
        """Every item in every cyclic option order (`swap`, lettered options) or as written."""
        cols = self.cfg.columns
        out = []
        for index, row in enumerate(rows):
            choices = option_texts(row, cols)
            n = len(choices)
            answer = row_option(row, cols, "answer", n)
            wrong = (answer + 1) % n
            negative_spec = cols.get("negative")
            if negative_spec is not None and (
                is_constant("negative", negative_spec, row) or row.get(negative_spec) is not None
            ):
                negative = row_option(row, cols, "negative", n)
                wrong = negative if negative != answer else wrong
            letters = tuple(chr(ord("A") + i) for i in range(n))
            for text, order in self._orders(str(row[cols["prompt"]]), choices):
                shown = "\n".join(f"{letters[i]}) {choices[o]}" for i, o in enumerate(order))
                fields = {**row, "options": shown}
                prompt = render_prompt(
                    self.cfg, self.tokenizer, text, self.cfg.answer_prefix, fields
                )
                options = tuple(choices[o] for o in order)
                out.append(
                    McVariant(
                        index, prompt, options, letters, order.index(answer), order.index(wrong)
                    )
                )
        return out

    def _fields(self, row: Row) -> dict[str, Any]:
        """A train row's template fields: its columns and, when it has options, `{options}`."""
        try:
            choices = option_texts(row, self.cfg.columns)
        except (KeyError, UserError):
            return dict(row)
        shown = "\n".join(f"{chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))
        return {**row, "options": shown}

    def train_pairs(self, rows: Sequence[Row]) -> list[ContrastivePair]:
        """The prompt followed by the correct option's text vs the contrasting option's.

        With a `train_source`: its `train_columns` (`objectives.train_pairs`), the prompt
        rendered like a validation prompt unless `task.train_template` is false.
        """
        if self.cfg.train_source is not None:
            prefix = self.cfg.answer_prefix
            return source_pairs(self.cfg, self.tokenizer, rows, prefix, True, self._fields)
        return [
            ContrastivePair(v.prompt, " " + v.options[v.correct], " " + v.options[v.wrong])
            for v in self.variants(rows)
        ]

    def prepare(self, rows: Sequence[Row]) -> PreparedMc:
        """Tokenize every variant's prompt and options once; batch by prompt length."""
        variants = self.variants(rows)
        enc = self.tokenizer.encode
        prompt_ids = [enc(v.prompt) for v in variants]
        option_ids = [
            [enc(" " + o, add_special_tokens=False) for o in v.options] for v in variants
        ]
        batches = length_sorted_batches(
            [len(p) for p in prompt_ids], self.cfg.objective.batch_size
        )
        return PreparedMc(variants, prompt_ids, option_ids, batches, len(rows))

    def precompute(self, model: Any, prepared: PreparedMc, prefix: bool) -> None:
        """Nothing to precompute: every trial re-runs its prompts (steering may touch them)."""

    def _logliks(
        self, model: Any, prepared: PreparedMc, batch: list[int], count: int = 1
    ) -> list[list[float]]:
        """Per variant in `batch`, the log-likelihood of each option after the prompt; `count`
        > 1: every variant `count` times, interleaved (row `r` is variant `batch[r // count]`
        under trial `r % count`).

        The prompts run once with a KV cache; each option position then runs on top of it
        (right-padded, so pads come after every real token) and the cache is restored.
        """
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        rows = [i for i in batch for _ in range(count)]
        inputs = pad_left([prepared.prompt_ids[i] for i in rows], pad, device)
        with torch.inference_mode():
            out = model(**inputs, use_cache=True)
        cache = output_cache(out)
        first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        n_opts = max(len(prepared.option_ids[i]) for i in rows)
        scores: list[list[float]] = [[] for _ in rows]
        for j in range(n_opts):
            opts = [
                prepared.option_ids[i][j] if j < len(prepared.option_ids[i]) else [pad]
                for i in rows
            ]
            length = max(len(o) for o in opts)
            ids = torch.full((len(rows), length), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for r, o in enumerate(opts):
                ids[r, : len(o)] = torch.tensor(o)
                mask[r, : len(o)] = 1
            start = inputs["position_ids"][:, -1:] + 1
            positions = start + torch.arange(length, device=device)
            # the prompts' cache is restored for the next option (copied on sliding windows)
            with torch.inference_mode(), scratch_cache(cache) as extended:
                logits = model(
                    input_ids=ids.to(device),
                    attention_mask=torch.cat([inputs["attention_mask"], mask.to(device)], 1),
                    position_ids=positions,
                    **with_cache(model, extended),
                    use_cache=True,
                ).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for r, o in enumerate(opts):
                if j >= len(prepared.option_ids[rows[r]]):
                    continue
                total = float(first[r, o[0]])
                for k in range(1, len(o)):
                    total += float(logp[r, k - 1, o[k]])
                mean = self.cfg.objective.loglik == "mean"
                scores[r].append(total / len(o) if mean else total)
        return scores

    def score(
        self,
        model: Any,
        prepared: PreparedMc,
        report: Reporter | None = None,
        reuse_prefix: bool = False,
    ) -> ScoreResult:
        """Mean correct-option probability (softmax over option log-likelihoods), per item
        averaged over its option orders; accuracy and per-letter scores alongside."""
        return self.score_groups(model, prepared, [report], reuse_prefix)[0]

    def score_groups(
        self,
        model: Any,
        prepared: PreparedMc,
        reports: Sequence[Reporter | None],
        reuse_prefix: bool = False,
    ) -> list[ScoreResult]:
        """`score` for `len(reports)` trials in one pass: row group `g` of every batch runs
        under trial `g`'s steering (`hpo.steering.hooks.steer_groups`)."""
        count = len(reports)
        prob = [[0.0] * len(prepared.variants) for _ in range(count)]
        hit = [[0.0] * len(prepared.variants) for _ in range(count)]
        done: list[list[float]] = [[] for _ in range(count)]
        for step, batch in enumerate(progress(prepared.batches, "scoring")):
            logliks = self._logliks(model, prepared, batch, count)
            for g, report in enumerate(reports):
                for i, ll in zip(batch, logliks[g::count], strict=True):
                    v = prepared.variants[i]
                    probs = torch.softmax(torch.tensor(ll), dim=0)
                    prob[g][i] = float(probs[v.correct])
                    hit[g][i] = float(max(range(len(ll)), key=ll.__getitem__) == v.correct)
                    done[g].append(prob[g][i])
                if report is not None:
                    # Variant ids are stable across trials (per-item reports for Wilcoxon).
                    report(step, sum(done[g]) / len(done[g]), {i: prob[g][i] for i in batch})
        return [self._result(prepared, p, h) for p, h in zip(prob, hit, strict=True)]

    def _result(self, prepared: PreparedMc, prob: list[float], hit: list[float]) -> ScoreResult:
        per_item, accuracy = _by_item(prepared, prob), _by_item(prepared, hit)
        letters: dict[str, list[float]] = {}
        for v, p in zip(prepared.variants, prob, strict=True):
            letters.setdefault(v.letters[v.correct], []).append(p)
        per_letter = {k: sum(x) / len(x) for k, x in sorted(letters.items())}
        n_options = [1] * prepared.n_items
        for v in prepared.variants:
            n_options[v.item] = len(v.options)
        chance = chance_items(n_options)
        return ScoreResult(
            sum(per_item) / len(per_item),
            per_item,
            per_letter,
            metrics={"accuracy": sum(accuracy) / len(accuracy)},
            metric_items={"accuracy": accuracy},
            # uniform answers: 1 / n options per item (a baseline below it is a format bias)
            chance=sum(chance) / len(chance),
            chance_items=chance,
            # An item's own noise: the spread of its score over its option orders.
            item_noise=_by_item(prepared, prob, spread),
            accuracy=sum(accuracy) / len(accuracy),
            per_item_accuracy=accuracy,
        )


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _by_item(
    prepared: PreparedMc, values: list[float], reduce: Callable[[list[float]], float] = _mean
) -> list[float]:
    lists: list[list[float]] = [[] for _ in range(prepared.n_items)]
    for v, x in zip(prepared.variants, values, strict=True):
        lists[v.item].append(x)
    return [reduce(xs) for xs in lists]
