"""Where a trial's vectors act: the `positions` registry.

Positions are counted in the whole sequence (prompt + generated). Each rule answers the
questions the hooks, the attribution, the residual cache, the prefix KV reuse and the export ask,
so no caller compares position names:

- `all`: every position, the prompt included (llama.cpp's control vector).
- `prompt_end_onward`: from the prompt's last token on; every earlier prompt token is unsteered,
  so that prefix is the same in every trial (its KV cache is reused).
- `generated`: the generated tokens only; the prompt is unsteered, so (as for
  `prompt_end_onward`) the KV cache of all but its last token is reused.

Adding a rule is one entry in `POSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpo.core.errors import named


@dataclass(frozen=True)
class Positions:
    """One positions rule.

    Attributes:
        name: the name in configs, params and steering.json.
        offset: the first steered position is `prompt_length + offset`; None: every position.
        reuses_prompt_prefix: the prompt tokens before the first steered one are unsteered in
            every trial, and the objectives reuse their KV cache across trials.
    """

    name: str
    offset: int | None
    reuses_prompt_prefix: bool = False

    @property
    def every(self) -> bool:
        """Whether every position is steered (the prompt included)."""
        return self.offset is None

    def first(self, prompt_length: int) -> int:
        """The first steered position of a sequence whose prompt has `prompt_length` tokens."""
        return 0 if self.offset is None else prompt_length + self.offset

    def first_steered(self, prompt_length: int | None, past: int, seq_len: int) -> int:
        """The first position of a forward chunk (`seq_len` new tokens after `past` cached ones)
        that gets the vector.

        `prompt_length` None (no generation helper announced it): a chunk without cache is
        taken as the whole prompt, a chunk after a cache as decoding after the prompt.
        """
        if self.offset is None:
            return 0
        prompt = prompt_length if prompt_length is not None else past + seq_len
        if past > 0 and prompt_length is None:
            prompt = past  # decoding with a cache after an unannounced prompt
        return max(self.first(prompt) - past, 0)


POSITIONS: dict[str, Positions] = {
    "all": Positions("all", None),
    "prompt_end_onward": Positions("prompt_end_onward", -1, reuses_prompt_prefix=True),
    "generated": Positions("generated", 0, reuses_prompt_prefix=True),
}


def positions_named(name: str) -> Positions:
    """The positions rule `name`.

    Raises:
        UserError: an unknown name (the message lists the known ones).
    """
    return named("positions", POSITIONS, name)
