"""A/B (and multiple-choice letter) items scored by the probability of the right letter.

Score of one item = p(correct letter) / sum of p(every option letter), read from the logits right
after the answer prefix. With `balance: swap` (the default) every item is scored in every cyclic
order of its options, so each letter is correct equally often and a direction that only moves the
letter prior cannot raise the score; per-letter scores are returned so that can be checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.core.chance import chance_items
from hpo.core.config import TaskConfig
from hpo.core.errors import UserError
from hpo.core.progress import progress
from hpo.core.stats import spread
from hpo.model.batching import length_sorted_batches, pad_left
from hpo.model.decoding import keep_logits, prompt_prefix
from hpo.model.kv import RepeatedPrefixes, scratch_cache, with_cache
from objectives._base import BaseObjective, ContrastivePair, Reporter, Row, ScoreResult
from objectives.prompts import render_prompt
from objectives.train_pairs import source_pairs

OPTION_LINE = re.compile(r"^(?P<indent>[ \t]*)\((?P<letter>[A-Z])\)(?P<text>.*)$", re.MULTILINE)
LETTER = re.compile(r"[A-Z]")


@dataclass(frozen=True)
class ChoiceVariant:
    """One item in one option order: the prompt, its letters, and which one is correct."""

    item: int
    prompt: str
    letters: tuple[str, ...]
    correct: int
    wrong: int


@dataclass
class PreparedChoices:
    """A split tokenized once: variants, their token ids, and length-sorted batches."""

    variants: list[ChoiceVariant]
    token_ids: list[list[int]]
    batches: list[list[int]]
    n_items: int
    # Unsteered KV cache of every batch's prompts minus their last token (see `build_prefix`).
    prefix: list[Any] | None = None
    # The prefixes with their rows repeated, for passes that score several trials at once.
    repeated: RepeatedPrefixes = field(default_factory=RepeatedPrefixes, repr=False)
    # `PreparedSplit`'s other fields: no fluency reference, no unsteered result kept.
    reference: dict[str, float] = field(default_factory=dict)
    baseline: ScoreResult | None = None


def _letter(value: Any, column: str) -> str:
    match = LETTER.search(str(value))
    if match is None:
        raise UserError(f"column {column!r} must hold an answer letter like '(A)', got {value!r}")
    return match.group(0)


def rotate_options(text: str, shift: int) -> tuple[str, tuple[str, ...]]:
    """Move the text of option i to letter (i + shift) mod n; return the new text and letters.

    Raises:
        UserError: fewer than two `(A)`-style option lines, or letters not A, B, C... in order.
    """
    lines = list(OPTION_LINE.finditer(text))
    letters = tuple(m.group("letter") for m in lines)
    expected = tuple(chr(ord("A") + i) for i in range(len(letters)))
    if len(letters) < 2 or letters != expected:
        raise UserError(
            "balance: swap needs option lines '(A) ...', '(B) ...' in order in every prompt, "
            f"found letters {list(letters)} in {text[-120:]!r}"
        )
    n = len(lines)
    bodies = [m.group("text") for m in lines]
    out, last = [], 0
    for i, m in enumerate(lines):
        out.append(text[last : m.start()])
        out.append(f"{m.group('indent')}({letters[i]}){bodies[(i - shift) % n]}")
        last = m.end()
    out.append(text[last:])
    return "".join(out), letters


class ChoiceProbability(BaseObjective):
    """Objective kind `choice_probability` (see the module docstring)."""

    kind = "choice_probability"
    forward_only = True
    required_columns = ("prompt", "positive", "negative")

    def __init__(self, cfg: TaskConfig, tokenizer: Any) -> None:
        for role in self.required_columns:
            if role not in cfg.columns:
                raise UserError(
                    f"task {cfg.name!r}: objective choice_probability needs task.columns.{role}, "
                    f"got columns {dict(cfg.columns)}"
                )
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.direction = cfg.objective.direction
        self._letter_ids: dict[str, int] = {}

    @property
    def attribution(self) -> tuple[str, str]:
        """The answer-letter log-odds at the answer position, which the score is monotone in."""
        return ("letter", "sum")

    def bias_cause(self) -> str:
        """A letter prior, or the text before the letter."""
        return (
            "likely a letter prior or the answer format (task.objective.balance=swap scores "
            "every option order; task.answer_prefix sets what precedes the letter)"
        )

    def letter_id(self, letter: str) -> int:
        """The single token id of an answer letter as it follows the answer prefix."""
        if letter not in self._letter_ids:
            ids = self.tokenizer.encode(letter, add_special_tokens=False)
            if len(ids) != 1:
                raise UserError(f"answer letter {letter!r} is not one token ({ids})")
            self._letter_ids[letter] = ids[0]
        return self._letter_ids[letter]

    def variants(self, rows: Sequence[Row]) -> list[ChoiceVariant]:
        """Every item in every option order (`swap`) or as written (`none`)."""
        cols = self.cfg.columns
        out: list[ChoiceVariant] = []
        for index, row in enumerate(rows):
            text = str(row[cols["prompt"]])
            correct = _letter(row[cols["positive"]], cols["positive"])
            wrong = _letter(row[cols["negative"]], cols["negative"])
            if self.cfg.objective.balance == "none":
                letters = tuple(m.group("letter") for m in OPTION_LINE.finditer(text)) or (
                    "A",
                    "B",
                )
                shifts = [(0, text)]
            else:
                _, letters = rotate_options(text, 0)
                shifts = [(s, rotate_options(text, s)[0]) for s in range(len(letters))]
            for shift, shifted in shifts:
                n = len(letters)
                c = (letters.index(correct) + shift) % n
                w = (letters.index(wrong) + shift) % n
                prompt = render_prompt(
                    self.cfg, self.tokenizer, shifted, self.cfg.answer_prefix, row
                )
                out.append(ChoiceVariant(index, prompt, letters, c, w))
        return out

    def train_pairs(self, rows: Sequence[Row]) -> list[ContrastivePair]:
        """CAA pairs: the prompt followed by the right vs the wrong letter and `)`.

        With a `train_source`: its `train_columns` (`objectives.train_pairs`), the prompt
        rendered like a validation prompt unless `task.train_template` is false.
        """
        if self.cfg.train_source is not None:
            return source_pairs(self.cfg, self.tokenizer, rows, self.cfg.answer_prefix)
        return [
            ContrastivePair(v.prompt, v.letters[v.correct] + ")", v.letters[v.wrong] + ")")
            for v in self.variants(rows)
        ]

    def prepare(self, rows: Sequence[Row]) -> PreparedChoices:
        """Tokenize every variant once and group them into length-sorted batches."""
        variants = self.variants(rows)
        token_ids = [self.tokenizer.encode(v.prompt) for v in variants]
        batches = length_sorted_batches([len(t) for t in token_ids], self.cfg.objective.batch_size)
        return PreparedChoices(variants, token_ids, batches, len(rows))

    def precompute(self, model: Any, prepared: PreparedChoices, prefix: bool) -> None:
        """Build the prompt-prefix KV cache when trials can reuse it (nothing else to do)."""
        if prefix:
            self.build_prefix(model, prepared)

    def build_prefix(self, model: Any, prepared: PreparedChoices) -> None:
        """Cache the unsteered KV of each batch's prompts without their last token, once.

        Steering from the prompt's last token onward leaves everything before it unchanged, so a
        trial then runs one token per item instead of the whole prompt. Must run unsteered.
        Marked (`prompt_prefix`): `generated` starts after the prompt's last token, wherever a
        chunk starts; a batch of one-token prompts has no prefix (None) and runs whole.
        """
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        prepared.prefix = [
            prompt_prefix(model, pad_left([prepared.token_ids[i] for i in batch], pad, device))
            for batch in prepared.batches
        ]

    def _last_logits(
        self, model: Any, prepared: PreparedChoices, step: int, reuse_prefix: bool, count: int
    ) -> torch.Tensor:
        """The next-token logits after each prompt of batch `step`; `count` > 1: every prompt
        `count` times, interleaved (row `r` is prompt `r // count` under trial `r % count`)."""
        batch = prepared.batches[step]
        device = next(model.parameters()).device
        inputs = pad_left(
            [prepared.token_ids[i] for i in batch for _ in range(count)],
            self.tokenizer.pad_token_id,
            device,
        )
        keep = keep_logits(model, 1)
        prefix = None
        if reuse_prefix:
            if prepared.prefix is None:
                raise RuntimeError("build_prefix must run before scoring with reuse_prefix")
            prefix = prepared.repeated.get(prepared.prefix, step, count)
        with torch.inference_mode():
            if prefix is None:
                return model(**inputs, use_cache=False, **keep).logits[:, -1, :].float()
            # The unsteered prefix goes back to its state for the next trial.
            with scratch_cache(prefix) as cache:
                out = model(
                    input_ids=inputs["input_ids"][:, -1:],
                    attention_mask=inputs["attention_mask"],
                    position_ids=inputs["position_ids"][:, -1:],
                    **with_cache(model, cache),
                    use_cache=True,
                    **keep,
                )
            return out.logits[:, -1, :].float()

    def score(
        self,
        model: Any,
        prepared: PreparedChoices,
        report: Reporter | None = None,
        reuse_prefix: bool = False,
    ) -> ScoreResult:
        """Mean over items of the normalised probability of the correct letter.

        `reuse_prefix` runs only the last prompt token on top of `build_prefix`'s cache: exact
        when steering starts at the prompt's end (`positions: prompt_end_onward`).
        """
        return self.score_groups(model, prepared, [report], reuse_prefix)[0]

    def score_groups(
        self,
        model: Any,
        prepared: PreparedChoices,
        reports: Sequence[Reporter | None],
        reuse_prefix: bool = False,
    ) -> list[ScoreResult]:
        """`score` for `len(reports)` trials in one pass: row group `g` of every batch runs
        under trial `g`'s steering (`hpo.steering.hooks.steer_groups`)."""
        count = len(reports)
        scores = [[math.nan] * len(prepared.variants) for _ in range(count)]
        done: list[list[float]] = [[] for _ in range(count)]
        for step, batch in enumerate(progress(prepared.batches, "scoring")):
            logits = self._last_logits(model, prepared, step, reuse_prefix, count)
            for g, report in enumerate(reports):
                for row, i in enumerate(batch):
                    v = prepared.variants[i]
                    ids = [self.letter_id(letter) for letter in v.letters]
                    probs = torch.softmax(logits[row * count + g, ids], dim=-1)
                    scores[g][i] = float(probs[v.correct])
                    done[g].append(scores[g][i])
                if report is not None:
                    # Variant ids are stable across trials; every item has as many of them.
                    report(step, sum(done[g]) / len(done[g]), {i: scores[g][i] for i in batch})
        return [self._result(prepared, s) for s in scores]

    def _result(self, prepared: PreparedChoices, variant_scores: list[float]) -> ScoreResult:
        per_item_lists: list[list[float]] = [[] for _ in range(prepared.n_items)]
        per_letter_lists: dict[str, list[float]] = {}
        for v, s in zip(prepared.variants, variant_scores, strict=True):
            per_item_lists[v.item].append(s)
            per_letter_lists.setdefault(v.letters[v.correct], []).append(s)
        per_item = [sum(xs) / len(xs) for xs in per_item_lists]
        per_letter = {k: sum(xs) / len(xs) for k, xs in sorted(per_letter_lists.items())}
        n_options = [2] * prepared.n_items
        for v in prepared.variants:
            n_options[v.item] = len(v.letters)
        # uniform answers: 1 / n letters per item (a baseline below it is a format bias)
        chance = chance_items(n_options)
        return ScoreResult(
            sum(per_item) / len(per_item),
            per_item,
            per_letter,
            chance=sum(chance) / len(chance),
            chance_items=chance,
            # An item's own noise: the spread of its score over its option orders.
            item_noise=[spread(xs) for xs in per_item_lists],
        )
