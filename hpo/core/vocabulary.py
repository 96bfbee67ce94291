"""The search space's words (DESIGN.md vocabulary), shared by config, search space and code."""

from __future__ import annotations

AGGREGATIONS = ("last", "mean", "choice")
METHODS = ("caa", "pca", "probe", "model_diff")
POSITIONS = ("all", "prompt_end_onward", "generated")
# Positions that leave every prompt token but the last unsteered: that prefix's KV cache is the
# same in every trial, so it is computed once per worker and reused.
PREFIX_POSITIONS = ("prompt_end_onward", "generated")
MODES = ("add", "add_norm_preserving", "ablate")
# Modes that add `alpha * vector` (alpha = 0 is the unsteered model); `ablate` has no alpha.
ADD_MODES = ("add", "add_norm_preserving")
ALPHA_SCALES = ("relative", "absolute")
# Where a vector acts (seed 003): block outputs, or attention heads around the output projection.
SITES = ("residual", "heads")
HEAD_POINTS = ("pre_o_proj", "post_o_proj")
HEAD_MODES = ("add", "add_norm_preserving")
# The probe gate: off, steer where the probe sees the behaviour, or where it does not.
PROBE_GATES = ("off", "present", "absent")
