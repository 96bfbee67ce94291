"""The bad-input tables of every verb together: many cases, each named once."""

from __future__ import annotations

from tests.bad_inputs_tests import (
    test_cli,
    test_dashboard,
    test_export,
    test_generate,
    test_layers,
    test_optimize,
    test_status,
    test_worker,
)

MODULES = (
    test_optimize,
    test_status,
    test_worker,
    test_generate,
    test_export,
    test_cli,
    test_layers,
    test_dashboard,
)


def test_the_table_has_at_least_sixty_distinct_cases() -> None:
    ids = [c[0] for m in MODULES for c in m.CASES]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)
