"""Generation objective on the real model: VADER scoring, fluency measures, and the constraint
that keeps degenerate text from ever being exported."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo import UserError
from hpo.core.record import BASELINE_ATTR
from hpo.core.selection import pick_trial
from hpo.model.loading import LoadedModel
from hpo.run.study import check_config, open_study, prepare_worker, run_trials
from objectives.fluency import distinct2, perplexities
from objectives.scorers import get_scorer, sentiment
from tests.conftest import compose_run


@pytest.mark.parametrize(
    ("ids", "expected"),
    [([1, 2, 3, 4], 1.0), ([5, 5, 5, 5, 5], 0.25), ([1, 2, 1, 2, 1], 0.5), ([7], 1.0)],
)
def test_distinct2_counts_unique_bigrams(ids: list[int], expected: float) -> None:
    assert distinct2(ids) == pytest.approx(expected)


def test_sentiment_scorer_orders_obvious_texts() -> None:
    assert sentiment("What a wonderful, happy day!") > 0.5
    assert sentiment("This is a horrible, miserable failure.") < -0.5
    with pytest.raises(
        UserError,
        match=r"scorer must be one of \['exact', 'math', 'regex', 'sentiment'\], got 'tone'",
    ):
        get_scorer("tone")


def test_perplexity_of_the_models_own_greedy_text_is_low(tiny_model_dir: Path) -> None:
    from hpo import ModelConfig
    from hpo.model.decoding import generate_ids
    from hpo.model.loading import load_model

    tiny = load_model(ModelConfig(name_or_path=str(tiny_model_dir), gguf_file=None))
    prompts = [tiny.tokenizer.encode("Once upon a time")]
    greedy = generate_ids(tiny.model, tiny.tokenizer, prompts, 8)
    noise = [[1000, 23000, 77, 4011, 999, 31000, 12, 5]]
    pad = tiny.tokenizer.pad_token_id
    assert (
        perplexities(tiny.model, pad, prompts, greedy)[0]
        < perplexities(tiny.model, pad, prompts, noise)[0]
    )


@pytest.mark.slow
def test_repetitive_text_is_infeasible_and_never_exported(tmp_path: Path) -> None:
    cfg = compose_run(
        "experiment=smoke",
        f"output_dir={tmp_path}",
        "study.n_trials=3",
        "task.instruction=null",  # the enqueued trials right after the baseline
        "task.splits.validation=6",
        "search_space.layers.low=3",
        "search_space.layers.high=27",
    )
    task = check_config(cfg)
    study = open_study(cfg)
    common = {"method": "caa", "positions": "all"}
    # measured on SmolLM2: layer 24 at alpha 1.2 repeats one word ("vibrant vibrant ..."),
    # layer 20 at alpha 0.23 (last token) stays fluent and turns the text positive.
    study.enqueue_trial({"layer": 24, "alpha": 1.2, "aggregation": "mean", **common})
    study.enqueue_trial({"layer": 20, "alpha": 0.23, "aggregation": "last", **common})
    run_trials(study, prepare_worker(cfg, task), cfg.study.n_trials)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    baseline, repetitive, fluent = trials
    assert baseline.user_attrs[BASELINE_ATTR]
    assert repetitive.user_attrs["feasible"] is False, repetitive.user_attrs
    assert repetitive.user_attrs["distinct2"] < 0.5
    assert fluent.user_attrs["feasible"] is True, fluent.user_attrs
    # Optuna's own constrained optimization sees the constraint values
    assert repetitive.constraints["distinct2_ratio"] > 0
    assert all(v <= 0 for v in fluent.constraints.values())
    assert pick_trial(study, None).number == fluent.number
    with pytest.raises(UserError, match=f"export.trial={repetitive.number} is infeasible"):
        pick_trial(study, repetitive.number)


def test_generation_reports_mean_generated_tokens_up_to_eos(tiny_model_dir: Path) -> None:
    from hpo import ModelConfig
    from hpo.model.loading import load_model
    from objectives import Generation

    cfg = compose_run("task=sentiment", "task.objective.max_new_tokens=6").task
    tiny = load_model(ModelConfig(name_or_path=str(tiny_model_dir), gguf_file=None))
    objective = Generation(cfg, tiny.tokenizer)
    prepared = objective.prepare([{"prompt": "Tell me a story."}, {"prompt": "Hi."}])
    result = objective.score(tiny.model, prepared)
    assert result.continuations is not None
    lengths = [len(c) for c in result.continuations]
    eos = tiny.tokenizer.eos_token_id
    assert all(eos not in c for c in result.continuations)
    assert result.metric_items["tokens"] == [float(n) for n in lengths]
    assert result.metrics["tokens"] == sum(lengths) / 2
    assert all(0 <= n <= 6 for n in lengths)


def test_math_generation_on_smollm2_reads_the_answers_it_gets_right(smollm2: LoadedModel) -> None:
    from objectives import make_objective

    cfg = compose_run("task=gsm8k", "task.objective.max_new_tokens=40")
    objective = make_objective(cfg.task, smollm2.tokenizer)
    rows = [
        {
            "question": "Tom has 2 apples and buys 3 more. How many apples does he have now?",
            "answer": "2 + 3 = <<2+3=5>>5\n#### 5",
        },
        {"question": "A box holds 12 eggs. How many eggs are in 3 boxes?", "answer": "#### 36"},
    ]
    result = objective.score(smollm2.model, objective.prepare(rows))
    # measured: greedy SmolLM2 works both out and ends "The answer is 5." / "... 36."
    assert result.per_item == [1.0, 1.0], result.texts
    assert result.extracted == ["5", "36"]
    assert result.counts == {"n_unparsed": 0, "n_timeout": 0}
    assert result.texts is not None
    assert all(t.endswith(".") and "Question:" not in t for t in result.texts)
