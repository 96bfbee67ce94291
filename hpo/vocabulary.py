"""The search space's words (DESIGN.md vocabulary), shared by config, search space and code."""

from __future__ import annotations

AGGREGATIONS = ("last", "mean", "choice")
METHODS = ("caa",)
POSITIONS = ("all", "prompt_end_onward", "generated")
ALPHA_SCALES = ("relative", "absolute")
