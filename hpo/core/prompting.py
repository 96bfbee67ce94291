"""Steering against prompting: a task's instruction (one sentence asking for the behaviour in
words), where it goes in the prompt, and the `prompting` dimension a trial runs under.

`none` is the task's prompt as it is; `instruction` is the same prompt with the task's
instruction: as the chat model's system message (`placement: system`), or before the user's
text (`placement: user`, and for any model without a chat template). The prompted baseline of
a study is the unsteered model under `instruction`; a bundle records the prompting its numbers
were measured with, and `hpo.load_bundle(...).prompt` applies the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NONE = "none"
INSTRUCTION = "instruction"
PROMPTINGS = (NONE, INSTRUCTION)
PLACEMENTS = ("system", "user")
# Between the instruction and the prompt when both share one message (or a plain prompt).
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Instruction:
    """A task's instruction and where it goes.

    Attributes:
        text: one sentence; may name the row's fields like `prompt_template` (`{topic}`).
        placement: `system` (the chat template's system message) or `user` (before the text).
    """

    text: str
    placement: str = "user"

    def record(self) -> dict[str, str]:
        """As the bundle and the study record it."""
        return {"text": self.text, "placement": self.placement}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> Instruction | None:
        """The instruction a bundle recorded (None when it has none)."""
        if not record or not record.get("text"):
            return None
        return cls(str(record["text"]), str(record.get("placement", "user")))

    def filled(self, fields: Mapping[str, Any]) -> Instruction:
        """The instruction with a row's fields filled in."""
        return Instruction(self.text.format(**fields), self.placement)


def render(
    tokenizer: Any,
    body: str,
    chat_template: bool,
    instruction: Instruction | None = None,
) -> tuple[str, bool]:
    """`body` as the model sees it: `(text, chatted)`, `chatted` telling whether the chat template
    wrapped it (an answer prefix then opens the assistant's turn).

    With an instruction: the system message when `placement` is `system` and the chat template
    applies, else the instruction, a blank line, then `body`.
    """
    chatted = bool(chat_template and getattr(tokenizer, "chat_template", None))
    system = instruction is not None and instruction.placement == "system" and chatted
    if instruction is not None and not system:
        body = instruction.text + SEPARATOR + body
    if not chatted:
        return body, False
    messages = [{"role": "user", "content": body}]
    if system:
        assert instruction is not None
        messages.insert(0, {"role": "system", "content": instruction.text})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text), True
