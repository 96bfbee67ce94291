"""Generation objectives: greedy continuations of each prompt, scored by a named scorer.

Batched with left padding, `max_new_tokens` per prompt. The fluency guard measures the steered
continuations outside the steering context (perplexity under the unsteered model, distinct-2)
and turns them into Optuna constraints relative to the unsteered baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo import TaskConfig, length_sorted_batches
from hpo.generation import generate_ids
from objectives._base import ContrastivePair, Reporter, Row, ScoreResult
from objectives.fluency import distinct2, perplexities
from objectives.prompts import render_prompt
from objectives.scorers import get_scorer


@dataclass
class PreparedPrompts:
    """A split's prompts tokenized once, in length-sorted batches, plus the unsteered reference."""

    prompts: list[str]
    token_ids: list[list[int]]
    batches: list[list[int]]
    reference: dict[str, float] = field(default_factory=dict)
    baseline: ScoreResult | None = None


class Generation:
    """Objective kind `generation` (see the module docstring)."""

    kind = "generation"
    required_columns = ("prompt",)

    def __init__(self, cfg: TaskConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.direction = cfg.objective.direction
        self.scorer = get_scorer(cfg.objective.scorer)

    @property
    def constrained(self) -> bool:
        """Whether trials carry fluency constraints."""
        return self.cfg.objective.fluency.enabled

    def train_pairs(self, rows: Sequence[Row]) -> list[ContrastivePair]:
        """Pairs from `train_columns`: a shared prompt, a positive and a negative continuation."""
        prompt, pos, neg = (self.cfg.train_columns[k] for k in ("prompt", "positive", "negative"))
        return [ContrastivePair(str(r[prompt]), str(r[pos]), str(r[neg])) for r in rows]

    def prepare(self, rows: Sequence[Row]) -> PreparedPrompts:
        """Render and tokenize every prompt once."""
        prompts = [
            render_prompt(self.cfg, self.tokenizer, str(r[self.cfg.columns["prompt"]]))
            for r in rows
        ]
        token_ids = [self.tokenizer.encode(p) for p in prompts]
        batches = length_sorted_batches([len(t) for t in token_ids], self.cfg.objective.batch_size)
        return PreparedPrompts(prompts, token_ids, batches)

    def _generate(
        self, model: Any, prepared: PreparedPrompts, batch: list[int]
    ) -> list[list[int]]:
        raw = generate_ids(
            model,
            self.tokenizer,
            [prepared.token_ids[i] for i in batch],
            self.cfg.objective.max_new_tokens,
        )
        eos = self.tokenizer.eos_token_id
        return [row[: row.index(eos)] if eos in row else row for row in raw]

    def score(
        self,
        model: Any,
        prepared: PreparedPrompts,
        report: Reporter | None = None,
        reuse_prefix: bool = False,
    ) -> ScoreResult:
        """Mean scorer value of the greedy continuations (kept in `extras` for fluency)."""
        continuations: list[list[int]] = [[] for _ in prepared.prompts]
        per_item = [0.0] * len(prepared.prompts)
        done: list[float] = []
        for step, batch in enumerate(prepared.batches):
            for i, ids in zip(batch, self._generate(model, prepared, batch), strict=True):
                continuations[i] = ids
                per_item[i] = self.scorer(self.tokenizer.decode(ids, skip_special_tokens=True))
                done.append(per_item[i])
            if report is not None:
                report(step, sum(done) / len(done))
        texts = [self.tokenizer.decode(c, skip_special_tokens=True).strip() for c in continuations]
        return ScoreResult(
            sum(per_item) / len(per_item),
            per_item,
            extras={"continuations": continuations, "texts": texts},
        )

    def fluency(
        self, model: Any, prepared: PreparedPrompts, result: ScoreResult
    ) -> dict[str, float]:
        """Mean perplexity (under `model` as it is now: call unsteered) and distinct-2."""
        conts = result.extras["continuations"]
        ppl = perplexities(model, self.tokenizer.pad_token_id, prepared.token_ids, conts)
        d2 = [distinct2(c) for c in conts]
        return {"perplexity": sum(ppl) / len(ppl), "distinct2": sum(d2) / len(d2)}

    def precompute(self, model: Any, prepared: PreparedPrompts, prefix: bool) -> None:
        """Generate unsteered once and record the fluency reference the constraints compare to."""
        baseline = self.score(model, prepared)
        prepared.reference = self.fluency(model, prepared, baseline)
        prepared.baseline = baseline

    def constraints(
        self, prepared: PreparedPrompts, measured: dict[str, float]
    ) -> dict[str, float]:
        """Optuna constraint values (feasible when every value <= 0)."""
        f = self.cfg.objective.fluency
        ref = prepared.reference
        ppl_ratio = measured["perplexity"] / ref["perplexity"]
        return {
            "perplexity_ratio": ppl_ratio - f.max_perplexity_ratio,
            "distinct2_ratio": f.min_distinct2_ratio - measured["distinct2"] / ref["distinct2"],
        }
