"""The search space's words, shared by config, search space and code.

The names of methods, positions and modes are those of their registries
(`hpo.core.directions.METHODS`, `hpo.core.positions.POSITIONS`, `hpo.core.modes.MODES`), taken
when this module is imported; validators read the registries themselves, so an entry added at
run time is accepted everywhere.
"""

from __future__ import annotations

from hpo.core import directions, modes, positions

AGGREGATIONS = ("last", "mean", "choice")
METHODS = tuple(directions.METHODS)
POSITIONS = tuple(positions.POSITIONS)
MODES = tuple(modes.MODES)
# Positions that leave every prompt token but the last unsteered: that prefix's KV cache is the
# same in every trial, so it is computed once per worker and reused.
PREFIX_POSITIONS = tuple(n for n, p in positions.POSITIONS.items() if p.reuses_prompt_prefix)
# Modes that add `alpha * vector` (alpha = 0 is the unsteered model); `ablate` has no alpha.
ADD_MODES = modes.add_modes()
ALPHA_SCALES = ("relative", "absolute")
# Where a vector acts: block outputs, or attention heads around the output projection (CREST).
SITES = ("residual", "heads")
HEAD_POINTS = ("pre_o_proj", "post_o_proj")
HEAD_MODES = modes.head_modes()
# The probe gate: off, steer where the probe sees the behaviour, or where it does not.
PROBE_GATES = ("off", "present", "absent")
