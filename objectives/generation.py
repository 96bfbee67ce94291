"""Generation objectives: greedy continuations of each prompt, scored by a named scorer.

Batched with left padding, `max_new_tokens` per prompt, cut at the first `stop` string. Scorers
that compare with a gold answer (`math`, `exact`, `regex`) read it from `columns.answer`; texts
whose answer cannot be parsed score 0 and are counted (`n_unparsed`, `n_timeout`). The fluency
guard measures the steered continuations outside the steering context (perplexity under the
unsteered model, distinct-2) and turns them into Optuna constraints relative to the baseline.
With `reuse_prefix` (steering from the prompt's end on: `prompt_end_onward`, `generated`),
every batch's unsteered KV cache of its prompts without their last token is computed once
(`precompute`) and each trial generates from a scratch copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo.core.config import TaskConfig
from hpo.core.errors import UserError
from hpo.core.progress import progress
from hpo.model.batching import length_sorted_batches, pad_left
from hpo.model.decoding import finish, generate_ids, prompt_prefix
from hpo.model.kv import RepeatedPrefixes
from objectives._base import BaseObjective, ContrastivePair, Reporter, Row, ScoreResult
from objectives.fluency import distinct2, perplexities, perplexities_from_prefix
from objectives.math_answer import final_answer, worked_answer
from objectives.prompts import render_prompt
from objectives.scorers import STATUSES, get_scorer
from objectives.text_quality import mean_text_quality
from objectives.train_pairs import source_pairs


@dataclass
class PreparedPrompts:
    """A split's prompts tokenized once, in length-sorted batches, plus the unsteered reference."""

    prompts: list[str]
    token_ids: list[list[int]]
    batches: list[list[int]]
    references: list[str | None] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)
    baseline: ScoreResult | None = None
    # Per batch: the unsteered KV cache of its padded prompts but their last column (None: off).
    prefix: list[Any] | None = None
    # The prefixes with their rows repeated, for passes that score several trials at once.
    repeated: RepeatedPrefixes = field(default_factory=RepeatedPrefixes, repr=False)


@dataclass
class _Continuations:
    """One trial's continuations and scores, filled batch by batch."""

    n: int
    continuations: list[list[int]] = field(init=False)
    texts: list[str] = field(init=False)
    extracted: list[str] = field(init=False)
    statuses: list[str] = field(init=False)
    per_item: list[float] = field(init=False)
    done: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.n
        self.continuations = [[] for _ in range(n)]
        self.texts, self.extracted, self.statuses = [""] * n, [""] * n, ["ok"] * n
        self.per_item = [0.0] * n


class Generation(BaseObjective):
    """Objective kind `generation` (see the module docstring)."""

    kind = "generation"
    forward_only = False
    required_columns = ("prompt",)

    @classmethod
    def check_task(cls, cfg: TaskConfig) -> None:
        """A scorer that compares with a gold answer needs `columns.answer`."""
        scorer = get_scorer(cfg.objective.scorer, cfg.objective.pattern)
        if scorer.needs_reference and "answer" not in cfg.columns:
            raise UserError(
                f"task {cfg.name!r}: scorer {cfg.objective.scorer} compares with a gold answer: "
                f"set task.columns.answer, got columns {dict(cfg.columns)}"
            )

    def bundle_record(self) -> dict[str, Any]:
        """The decoding the numbers were measured with (`hpo generate` replays it)."""
        objective = self.cfg.objective
        return {
            "max_new_tokens": objective.max_new_tokens,
            "stop": list(objective.stop),
            "chat_template": self.cfg.chat_template,
        }

    def __init__(self, cfg: TaskConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.direction = cfg.objective.direction
        self.scorer = get_scorer(cfg.objective.scorer, cfg.objective.pattern)
        self.check_task(cfg)

    @property
    def constrained(self) -> bool:
        """Whether trials carry fluency constraints."""
        return self.cfg.objective.fluency.enabled

    def train_pairs(self, rows: Sequence[Row]) -> list[ContrastivePair]:
        """Contrastive pairs for the steering vector.

        With a `train_source`: its `train_columns` (a shared prompt, a positive and a negative
        continuation; the prompt rendered like a validation prompt unless
        `task.train_template` is false). Without one, on a task with gold answers: the rendered
        prompt followed by its worked gold answer (GSM8K's `<<calc>>` marks dropped, `#### N` ->
        "The answer is N.") vs a bare, confident wrong answer (another train item's final
        answer).
        """
        if self.cfg.train_source is None and "answer" in self.cfg.columns:
            return self._answer_pairs(rows)
        return source_pairs(self.cfg, self.tokenizer, rows)

    def _answer_pairs(self, rows: Sequence[Row]) -> list[ContrastivePair]:
        cols = self.cfg.columns
        golds = [str(r[cols["answer"]]) for r in rows]
        finals = [final_answer(g) for g in golds]
        pairs = []
        for i, row in enumerate(rows):
            wrong = next(
                (
                    finals[(i + k) % len(rows)]
                    for k in range(1, len(rows))
                    if finals[(i + k) % len(rows)] != finals[i]
                ),
                None,
            )
            if wrong is None:
                continue
            prompt = render_prompt(self.cfg, self.tokenizer, str(row[cols["prompt"]]), fields=row)
            pairs.append(
                ContrastivePair(prompt, worked_answer(golds[i]), f"The answer is {wrong}.")
            )
        if not pairs:
            raise UserError(
                f"task {self.cfg.name!r}: train pairs need at least two different gold answers "
                f"in the train split, got {sorted(set(finals))}"
            )
        return pairs

    def prepare(self, rows: Sequence[Row]) -> PreparedPrompts:
        """Render and tokenize every prompt once."""
        cols = self.cfg.columns
        prompts = [
            render_prompt(self.cfg, self.tokenizer, str(r[cols["prompt"]]), fields=r) for r in rows
        ]
        token_ids = [self.tokenizer.encode(p) for p in prompts]
        batches = length_sorted_batches([len(t) for t in token_ids], self.cfg.objective.batch_size)
        refs = [str(r[cols["answer"]]) if "answer" in cols else None for r in rows]
        return PreparedPrompts(prompts, token_ids, batches, refs)

    def build_prefix(self, model: Any, prepared: PreparedPrompts) -> None:
        """Cache each batch's unsteered prompt prefix once (see the module docstring)."""
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        prepared.prefix = [
            prompt_prefix(model, pad_left([prepared.token_ids[i] for i in batch], pad, device))
            for batch in prepared.batches
        ]

    def _generate(
        self, model: Any, prepared: PreparedPrompts, step: int, reuse_prefix: bool, count: int = 1
    ) -> list[list[int]]:
        """Batch `step`'s continuations; `count` > 1: every prompt `count` times, interleaved
        (row `r` is prompt `r // count` under trial `r % count`)."""
        if reuse_prefix and prepared.prefix is None:
            raise RuntimeError("build_prefix must run before scoring with reuse_prefix")
        prefix = None
        if reuse_prefix and prepared.prefix:
            prefix = prepared.repeated.get(prepared.prefix, step, count)
        return generate_ids(
            model,
            self.tokenizer,
            [prepared.token_ids[i] for i in prepared.batches[step] for _ in range(count)],
            self.cfg.objective.max_new_tokens,
            stop_strings=self.cfg.objective.stop or None,
            prefix=prefix,
        )

    def _finish(self, ids: list[int]) -> tuple[list[int], str]:
        """A continuation's tokens and text, cut at EOS and at the first stop string."""
        return finish(self.tokenizer, ids, self.cfg.objective.stop or None)

    def score(
        self,
        model: Any,
        prepared: PreparedPrompts,
        report: Reporter | None = None,
        reuse_prefix: bool = False,
    ) -> ScoreResult:
        """Mean scorer value of the greedy continuations (kept in the result for fluency).

        `reuse_prefix` generates from `build_prefix`'s caches: exact when steering starts at the
        prompt's end (`positions: prompt_end_onward` or `generated`) and no trigger gate reads
        the prompt.
        """
        return self.score_groups(model, prepared, [report], reuse_prefix)[0]

    def score_groups(
        self,
        model: Any,
        prepared: PreparedPrompts,
        reports: Sequence[Reporter | None],
        reuse_prefix: bool = False,
    ) -> list[ScoreResult]:
        """`score` for `len(reports)` trials in one pass: each batch generates every prompt
        once per trial, row group `g` under trial `g`'s steering (the caller opens
        `hpo.steering.hooks.steer_groups`); `reports[g]` hears trial `g`'s batches."""
        count = len(reports)
        n = len(prepared.prompts)
        refs = prepared.references or [None] * n
        trials = [_Continuations(n) for _ in range(count)]
        for step, batch in enumerate(progress(prepared.batches, "generating")):
            rows = self._generate(model, prepared, step, reuse_prefix, count)
            for g, (acc, report) in enumerate(zip(trials, reports, strict=True)):
                for i, raw in zip(batch, rows[g::count], strict=True):
                    acc.continuations[i], text = self._finish(raw)
                    acc.texts[i] = text.strip()
                    scored = self.scorer(text, refs[i])
                    acc.per_item[i] = scored.value
                    acc.statuses[i], acc.extracted[i] = scored.status, scored.extracted
                    acc.done.append(scored.value)
                if report is not None:
                    report(
                        step, sum(acc.done) / len(acc.done), {i: acc.per_item[i] for i in batch}
                    )
        return [self._result(acc, refs) for acc in trials]

    def _result(self, acc: _Continuations, refs: list[str | None]) -> ScoreResult:
        counts = {f"n_{s}": acc.statuses.count(s) for s in STATUSES if s != "ok"}
        # CREST's token count: generated tokens before EOS or a stop string, per prompt.
        tokens = [float(len(c)) for c in acc.continuations]
        return ScoreResult(
            sum(acc.per_item) / len(acc.per_item),
            acc.per_item,
            metrics={"tokens": sum(tokens) / len(tokens)},
            metric_items={"tokens": tokens},
            continuations=acc.continuations,
            texts=acc.texts,
            extracted=acc.extracted,
            references=refs,
            counts=counts,
        )

    def fluency(
        self, model: Any, prepared: PreparedPrompts, result: ScoreResult
    ) -> dict[str, float]:
        """Mean perplexity (under `model` as it is now: call unsteered), distinct-2 and text
        quality (share of dictionary-like words, markup stripped: `objectives.text_quality`)."""
        conts, texts = result.continuations, result.texts
        assert conts is not None and texts is not None, "a generation result"
        pad = self.tokenizer.pad_token_id
        if prepared.prefix is not None:
            # Unsteered: the prompts' cached states are exactly what this pass needs.
            ppl = perplexities_from_prefix(
                model, pad, prepared.token_ids, prepared.batches, prepared.prefix, conts
            )
        else:
            ppl = perplexities(model, pad, prepared.token_ids, conts)
        d2 = [distinct2(c) for c in conts]
        return {
            "perplexity": sum(ppl) / len(ppl),
            "distinct2": sum(d2) / len(d2),
            "text_quality": mean_text_quality(texts),
        }

    def precompute(self, model: Any, prepared: PreparedPrompts, prefix: bool) -> None:
        """Cache the prompt prefix when trials can reuse it (`prefix`), generate unsteered once
        and record the fluency reference the constraints compare to."""
        if prefix:
            self.build_prefix(model, prepared)
        baseline = self.score(model, prepared)
        prepared.reference = self.fluency(model, prepared, baseline)
        if self.constrained:
            baseline.metrics.update(prepared.reference)
        prepared.baseline = baseline

    def constraints(
        self, prepared: PreparedPrompts, measured: dict[str, float]
    ) -> dict[str, float]:
        """Optuna constraint values (feasible when every value <= 0).

        Ratios to the unsteered baseline, and absolute bounds; an absolute bound the baseline
        itself breaks (a random model's gibberish, a task whose text is markup) is left out, so
        the baseline is always feasible and the ratios still hold.
        """
        f = self.cfg.objective.fluency
        ref = prepared.reference
        ppl_ratio = measured["perplexity"] / ref["perplexity"]
        out = {
            "perplexity_ratio": ppl_ratio - f.max_perplexity_ratio,
            "distinct2_ratio": f.min_distinct2_ratio - measured["distinct2"] / ref["distinct2"],
        }
        if ref["perplexity"] <= f.max_perplexity:
            out["perplexity"] = measured["perplexity"] - f.max_perplexity
        if ref["distinct2"] >= f.min_distinct2:
            out["distinct2"] = f.min_distinct2 - measured["distinct2"]
        if ref.get("text_quality", 1.0) >= f.min_text_quality:
            out["text_quality"] = f.min_text_quality - measured.get("text_quality", 1.0)
        return out
