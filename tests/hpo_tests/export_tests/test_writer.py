"""A study that finds nothing says so: a winner whose held-out test gain is not shown (its 95%
interval of steered - unsteered is not wholly on the better side of 0) ships no bundle unless
`export.require_gain=false`. The winners here steer at alpha = 0, which reproduces the
unsteered model exactly: a difference of 0 on every test item, whatever the random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo.cli.command import main
from hpo.cli.verbs import NOTHING_TO_SHIP
from hpo.core.selection import pick_trial
from hpo.export.bundle import STEERING_JSON
from hpo.export.writer import NothingToShip, write_bundle
from tests.conftest import tiny_overrides
from tests.hpo_tests.run_tests.test_study import run_study, tiny_run

NO_EFFECT = "search_space.alpha={low: 0.0, high: 0.0}"


def test_a_winner_without_a_held_out_gain_is_not_written_unless_asked(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(tiny_model_dir, tmp_path, NO_EFFECT, "export.require_gain=true")
    study, worker = run_study(cfg)
    trial = pick_trial(study, None)
    target = tmp_path / "bundle"
    with pytest.raises(NothingToShip) as refused:
        write_bundle(worker, study, trial, target)
    reason = str(refused.value)
    assert f"the winner (trial {trial.number}) shows no gain" in reason
    assert "difference +0.0000 [95% CI +0.0000, +0.0000], not wholly above 0" in reason
    assert "export.require_gain=false" in reason and "\n" not in reason
    assert refused.value.metrics["test"]["gain_shown"] is False
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    worker.cfg.export.require_gain = False  # today's behaviour: ship it, and say so
    written = write_bundle(worker, study, trial, target)
    meta = json.loads((written / STEERING_JSON).read_text())
    assert meta["metrics"]["test"]["gain_shown"] is False
    assert any("export.require_gain=false" in w for w in meta["metrics"]["warnings"])

    worker.cfg.export.require_gain = True
    before = (written / STEERING_JSON).read_bytes()
    with pytest.raises(NothingToShip):
        write_bundle(worker, study, trial, written, force=True)
    assert (written / STEERING_JSON).read_bytes() == before  # the earlier bundle stays


def test_optimize_exits_0_and_export_exits_3_with_one_line_and_no_bundle(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    common = [*tiny_overrides(tiny_model_dir, tmp_path), NO_EFFECT, "study.n_trials=2"]
    assert main(["optimize", *common, "export.require_gain=true"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("nothing to ship: the winner (trial 1) shows no gain"), line
    assert not (tmp_path / "bundle").exists()

    target = tmp_path / "again"
    args = ["export", *common, f"export.dir={target}"]
    assert main([*args, "export.require_gain=true"]) == NOTHING_TO_SHIP == 3
    out = capsys.readouterr().out.strip()
    assert out.startswith("nothing to ship:") and len(out.splitlines()) == 1, out
    assert not target.exists()

    assert main(args) == 0  # debug=default sets export.require_gain=false
    assert (target / STEERING_JSON).is_file()
    assert "export.require_gain=false" in capsys.readouterr().out  # the printed warning
