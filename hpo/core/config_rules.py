"""The value rules every config schema shares: the allowed choices, size bounds and the checks
that raise one `UserError` naming the key and the value."""

from __future__ import annotations

from hpo.core.errors import UserError

DTYPES = ("float32", "float16", "bfloat16")
DIRECTIONS = ("maximize", "minimize")
BALANCES = ("swap", "none")
LOGLIKS = ("sum", "mean")
# Upper bounds on sizes, so a typo cannot ask for days of work or all the memory.
MAX_NEW_TOKENS = 32768
MAX_TRIALS = 1_000_000
# Trials one batched pass may score (each repeats every validation row once).
MAX_TRIALS_PER_PASS = 64
# No tokenizer packs more characters than this into one token of ordinary text: a prompt longer
# than max_prompt_tokens x this is refused before any tokenizer loads (the exact token count is
# checked once the prompts are tokenized).
CHARS_PER_TOKEN = 16
# The default damage guard: KL(steered || unsteered) on neutral prompts, nats per token. The demo's
# feasible trials reach 1.02 (winner: 0.79 validation, 0.91 test); broken ones 2.8 to 7.
DEFAULT_KL_MAX = 1.5


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {list(choices)}, got {value!r}")


def _at_least(name: str, value: int | None, low: int = 1) -> None:
    if value is not None and value < low:
        raise UserError(f"{name} must be >= {low}, got {value}")


def _at_most(name: str, value: int | None, high: int) -> None:
    if value is not None and value > high:
        raise UserError(f"{name} must be <= {high}, got {value}")
