"""`hpo optimize`: config values, task files and data, storage URLs, resources."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.bad_inputs_tests.conftest import (
    LONG_ROWS,
    ROWS,
    TASK,
    Case,
    Env,
    _regular_file,
    check_refused,
    optimize,
    task_case,
    tokenizer_model,
)

# Nine levels of nine aliases: a billion values once expanded ("billion laughs").
BOMB = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
    for i in range(10)
)


def _places() -> int:
    """What `workers` may use here: the GPUs, else the CPU cores."""
    return torch.cuda.device_count() or len(os.sched_getaffinity(0))


def _long_test_rows(env: Env) -> list[str]:
    """Rows whose test split alone holds prompts longer than task.max_prompt_tokens allows."""
    from hpo.core.config import ObjectiveConfig, SplitConfig, TaskConfig
    from hpo.run.tasks import load_task

    data = env.root / "rows.jsonl"
    data.write_text(ROWS)
    task = TaskConfig(
        name="bad",
        source=str(data),
        columns={"prompt": "q", "positive": "a", "negative": "b"},
        splits=SplitConfig(train=4, validation=4, test=4, seed=0),
        objective=ObjectiveConfig(kind="choice_probability"),
    )
    held_out = {row["q"] for row in load_task(task).test()}
    data.unlink()
    rows = [json.loads(line) for line in ROWS.splitlines()]
    for row in rows:
        if row["q"] in held_out:
            row["q"] += " " + "x" * 80  # over 4 tokens x 16 characters
    text = "".join(json.dumps(row) + "\n" for row in rows)
    return task_case(env, TASK + "max_prompt_tokens: 4\n", text)


def _experiment_bomb(env: Env) -> list[str]:
    """A stored config (a bundle's config.yaml, used as an experiment) that is an alias bomb."""
    conf = env.root / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "stored.yaml").write_text("# @package _global_\n" + BOMB)
    return optimize(env, "--config-dir", str(conf), "+experiment=stored")


CONFIG: list[Case] = [
    (
        "alpha-low-nan",
        lambda e: optimize(e, "search_space.alpha.low=nan"),
        r"search_space.alpha.low must be a finite number, got nan",
    ),
    (
        "alpha-high-inf",
        lambda e: optimize(e, "search_space.alpha.high=inf"),
        r"search_space.alpha.high must be a finite number, got inf",
    ),
    (
        "alpha-low-minus-inf",
        lambda e: optimize(e, "search_space.alpha.low=-inf"),
        r"search_space.alpha.low must be a finite number",
    ),
    (
        "alpha-low-above-high",
        lambda e: optimize(e, "search_space.alpha.low=3", "search_space.alpha.high=1"),
        r"alpha.low <= high must hold",
    ),
    (
        "alpha-log-needs-positive",
        lambda e: optimize(e, "search_space.alpha.log=true", "search_space.alpha.low=0"),
        r"alpha.log needs alpha.low > 0",
    ),
    (
        "layers-beyond-model",
        lambda e: optimize(e, "search_space.layers.high=9"),
        r"layers must lie in \[0, 3\]",
    ),
    (
        "window-zero",
        lambda e: optimize(e, "search_space.window.low=0"),
        r"window must satisfy 1 <= low <= high",
    ),
    (
        "perplexity-ratio-nan",
        lambda e: optimize(e, "+task.objective.fluency.max_perplexity_ratio=nan"),
        r"max_perplexity_ratio must be a finite number > 1",
    ),
    (
        "distinct2-ratio-nan",
        lambda e: optimize(e, "+task.objective.fluency.min_distinct2_ratio=nan"),
        r"min_distinct2_ratio must lie in \(0, 1\]",
    ),
    (
        "kl-max-nan",
        lambda e: optimize(e, "task.objective.kl.max=nan"),
        r"kl.max must be a number > 0 or null",
    ),
    (
        "kl-prompts-zero",
        lambda e: optimize(e, "task.objective.kl.n_prompts=0"),
        r"kl.n_prompts must be >= 1, got 0",
    ),
    (
        "sqlite-timeout-nan",
        lambda e: optimize(e, "storage.sqlite_timeout=nan"),
        r"storage.sqlite_timeout must be a finite number > 0",
    ),
    (
        "sqlite-timeout-negative",
        lambda e: optimize(e, "storage.sqlite_timeout=-1"),
        r"storage.sqlite_timeout must be a finite number > 0",
    ),
    (
        "heartbeat-zero",
        lambda e: optimize(e, "storage.heartbeat_interval=0"),
        r"storage.heartbeat_interval must be >= 1",
    ),
    (
        "grace-below-heartbeat",
        lambda e: optimize(e, "storage.grace_period=10"),
        r"grace_period must exceed storage.heartbeat_interval",
    ),
    (
        "max-retry-negative",
        lambda e: optimize(e, "storage.max_retry=-1"),
        r"storage.max_retry must be >= 0, got -1",
    ),
    ("n-trials-zero", lambda e: optimize(e, "study.n_trials=0"), r"study.n_trials must be >= 1"),
    (
        "trials-per-pass-zero",
        lambda e: optimize(e, "study.trials_per_pass=0"),
        r"study.trials_per_pass must be >= 1, got 0",
    ),
    (
        "trials-per-pass-huge",
        lambda e: optimize(e, "study.trials_per_pass=1000"),
        r"study.trials_per_pass must be <= 64, got 1000",
    ),
    (
        "n-trials-huge",
        lambda e: optimize(e, "study.n_trials=1000000000"),
        r"study.n_trials must be <= ",
    ),
    (
        "batch-size-zero",
        lambda e: optimize(e, "task.objective.batch_size=0"),
        r"batch_size must be >= 1",
    ),
    (
        "max-new-tokens-huge",
        lambda e: optimize(e, "+task.objective.max_new_tokens=100000000"),
        r"max_new_tokens must be <= ",
    ),
    (
        "max-prompt-tokens-zero",
        lambda e: optimize(e, "+task.max_prompt_tokens=0"),
        r"task.max_prompt_tokens must be >= 1",
    ),
    (
        "split-zero",
        lambda e: optimize(e, "task.splits.validation=0"),
        r"task.splits.validation must be >= 1",
    ),
    ("limit-zero", lambda e: optimize(e, "task.limit=0"), r"task.limit must be >= 1"),
    (
        "task-name-climbs",
        lambda e: optimize(e, "task.name=../../../x"),
        r"task.name must be a name of letters, digits",
    ),
    ("task-name-slash", lambda e: optimize(e, "task.name=a/b"), r"task.name must be a name"),
    ("task-name-absolute", lambda e: optimize(e, "task.name=/etc"), r"task.name must be a name"),
    ("workers-zero", lambda e: optimize(e, "workers=0"), r"workers must be >= 1"),
    ("worker-rank-negative", lambda e: optimize(e, "worker_rank=-1"), r"worker_rank must be >= 0"),
    (
        "port-out-of-range",
        lambda e: optimize(e, "dashboard.port=70000"),
        r"dashboard.port must lie in \[0, 65535\]",
    ),
    (
        "export-trial-negative",
        lambda e: optimize(e, "export.trial=-1"),
        r"export.trial must be >= 0",
    ),
    (
        "derived-tower-of-powers",
        lambda e: optimize(e, "search_space.derived.layer_alpha='alpha*10**10**10**10'"),
        r"exponents must be numbers of magnitude <= ",
    ),
    (
        "derived-infinite-literal",
        lambda e: optimize(e, "+search_space.derived.boost='alpha*1e999'"),
        r"search_space.derived.boost may only use finite numbers, got '1e309'",
    ),
    (
        "derived-code",
        lambda e: optimize(e, "+search_space.derived.boost='__import__(\"os\")'"),
        r"search_space.derived.boost may use numbers",
    ),
    (
        "derived-too-long",
        lambda e: optimize(e, f"+search_space.derived.boost='alpha{'+1' * 400}'"),
        r"search_space.derived.boost must be at most",
    ),
    ("log-level", lambda e: optimize(e, "log_level=LOUD"), r"log_level must be one of"),
    ("dtype", lambda e: optimize(e, "model.dtype=float64"), r"model.dtype must be one of"),
    ("unknown-key", lambda e: optimize(e, "study.colour=red"), r"study.colour"),
]


TASK_FILES: list[Case] = [
    (
        "yaml-malformed",
        lambda e: task_case(e, "name: bad\ncolumns: {prompt: q\n"),
        r"bad config: .*task/bad.yaml",
    ),
    ("yaml-not-utf8", lambda e: task_case(e, b"name: b\xffd\n"), r"bad config: .*not UTF-8"),
    ("yaml-unknown-key", lambda e: task_case(e, TASK + "colour: red\n"), r"colour"),
    (
        "yaml-name-climbs",
        lambda e: task_case(e, TASK.replace("name: bad", "name: ../evil")),
        r"task.name must be a name",
    ),
    (
        "data-not-utf8",
        lambda e: task_case(e, TASK, b'{"q": "caf\xe9"}\n' * 30),
        r"cannot read task.source",
    ),
    (
        "data-malformed-json",
        lambda e: task_case(e, TASK, '{"q": "x",\n' * 30),
        r"cannot read task.source",
    ),
    (
        "data-missing",
        lambda e: task_case(e, TASK, None),
        r"does not exist|cannot read task.source",
    ),
    ("data-empty", lambda e: task_case(e, TASK, ""), r"has no rows"),
    (
        "data-missing-column",
        lambda e: task_case(e, TASK.replace("prompt: q", "prompt: question")),
        r"column 'question' .* is missing",
    ),
    (
        "template-unknown-field",
        lambda e: task_case(e, TASK.replace('"{prompt}"', '"{prompt} {colour}"')),
        r"unknown field \{colour\}",
    ),
    (
        "template-without-prompt",
        lambda e: task_case(e, TASK.replace('"{prompt}"', '"hello"')),
        r"prompt_template must contain \{prompt\}",
    ),
    ("too-few-rows", lambda e: task_case(e, TASK, ROWS.split("\n", 25)[-1]), r"splits need"),
    (
        "overlapping-splits",
        lambda e: task_case(e, TASK, (json.dumps({"q": "same", "a": "A", "b": "B"}) + "\n") * 30),
        r"splits must not overlap",
    ),
    (
        "data-prompt-too-long",
        lambda e: task_case(e, TASK + "max_prompt_tokens: 2\n", LONG_ROWS),
        r"a prompt \(68 characters, row \d+\) cannot fit task.max_prompt_tokens=2 tokens",
    ),
    (
        "unknown-kind",
        lambda e: task_case(e, TASK.replace("kind: choice_probability", "kind: vibes")),
        r"vibes",
    ),
]


STORAGE: list[Case] = [
    (
        "url-not-a-url",
        lambda e: optimize(e, "storage.url=not-a-url"),
        r"storage.url must be a SQLAlchemy URL",
    ),
    (
        "url-backend",
        lambda e: optimize(e, "storage.url=redis://127.0.0.1/0"),
        r"backend must be one of",
    ),
    (
        "url-password-with-at",
        lambda e: optimize(e, "storage.url=mongodb://u:se@cret@host/db"),
        r"backend must be one of",
    ),
    (
        "sqlite-under-a-file",
        lambda e: optimize(e, f"storage.url=sqlite:///{_regular_file(e)}/study.db"),
        r"cannot open storage .*not a directory",
    ),
]


NEW: list[Case] = [
    (
        "max-prompt-tokens-as-the-readme-writes-it",
        lambda e: optimize(e, "task.max_prompt_tokens=0"),
        r"task.max_prompt_tokens must be >= 1, got 0",
    ),
    (
        "workers-beyond-the-machine",
        lambda e: optimize(e, f"workers={_places() + 1}"),
        r"workers=\d+ starts \d+ model copies, but this machine has \d+ (GPUs|CPU cores).*"
        r"memory per model copy .*memory free .*workers_check=false",
    ),
    (
        "trigger-ends-no-token",
        lambda e: optimize(
            e,
            f"model.name_or_path={tokenizer_model()}",
            "search_space.trigger=[zqxj-no-token-ends-so]",
        ),
        r"search_space.trigger: trigger 'zqxj-no-token-ends-so' ends no token",
    ),
    (
        "test-split-prompt-too-long",
        _long_test_rows,
        r"a prompt \(\d+ characters, row \d+\) cannot fit task.max_prompt_tokens=4 tokens",
    ),
    (
        "yaml-alias-bomb",
        lambda e: task_case(e, TASK + BOMB),
        r"bad config: config file .*task/bad.yaml' expands to more than 100000 values",
    ),
    (
        "yaml-alias-bomb-as-stored-config",
        _experiment_bomb,
        r"bad config: config file .*experiment/stored.yaml' expands to more than 100000 values",
    ),
    (
        "yaml-too-big",
        lambda e: task_case(e, TASK + "#" * (1 << 20) + "\n"),
        r"bad config: config file .*task/bad.yaml' holds \d+ bytes, more than the 1048576",
    ),
]

CASES = CONFIG + TASK_FILES + STORAGE + NEW


@pytest.mark.parametrize(("name", "build", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> None:
    check_refused(name, build, rule, env, capsys)


def test_workers_check_false_lets_the_workers_start(tmp_path: Path) -> None:
    """The explicit override of the workers-vs-resources check."""
    from hpo.run.preflight import check_workers
    from tests.conftest import compose_run

    many = f"workers={_places() + 1}"
    with pytest.raises(Exception, match="workers_check=false"):
        check_workers(compose_run(many, f"output_dir={tmp_path}"))
    check_workers(compose_run(many, "workers_check=false", f"output_dir={tmp_path}"))
