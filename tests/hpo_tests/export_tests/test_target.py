"""Export targets: nothing is ever deleted but an earlier bundle, and only when asked to."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hpo import UserError
from hpo.export.target import (
    MARKER,
    bundle_files,
    check_target,
    protected_paths,
    publish,
    staging_dir,
)


def staged(target: Path, text: str = "new") -> Path:
    """A finished bundle in its staging directory, as `write_bundle` leaves it."""
    tmp = staging_dir(target)
    (tmp / "vectors" / "t").mkdir(parents=True)
    (tmp / "vectors" / "t" / "steering_vector.safetensors").write_text(text)
    (tmp / "steering.json").write_text(json.dumps({"text": text}))
    return tmp


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_a_new_directory_gets_the_bundle_its_marker_and_ordinary_permissions(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out" / "bundle"
    publish(staged(target), target, force=False)
    assert (target / "steering.json").read_text() == '{"text": "new"}'
    assert bundle_files(target) == ["steering.json", "vectors/t/steering_vector.safetensors"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((target / "vectors").stat().st_mode) == 0o777 & ~mask
    assert siblings(target) == ["bundle"]  # no staging or .old leftovers


def test_an_empty_directory_is_used(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    publish(staged(target), target, force=False)
    assert (target / MARKER).is_file()


def test_an_earlier_bundle_is_replaced_only_with_force(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    publish(staged(target, "old"), target, force=False)
    with pytest.raises(UserError, match=r"already holds a bundle; set export\.force=true"):
        check_target(target, force=False)
    publish(staged(target, "new"), target, force=True)
    assert json.loads((target / "steering.json").read_text()) == {"text": "new"}
    assert siblings(target) == ["bundle"]


def test_a_user_folder_is_never_touched_even_with_force(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    for force in (False, True):
        with pytest.raises(UserError, match=r"no \.hpo-bundle marker"):
            check_target(target, force=force)
    assert (target / "thesis.tex").read_text() == "years of work"


def test_files_added_to_a_bundle_keep_it_from_being_replaced(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    publish(staged(target), target, force=False)
    (target / "vectors" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"files it did not write \('vectors/notes.txt'\)"):
        check_target(target, force=True)


def test_a_forged_marker_does_not_cover_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    publish(staged(target), target, force=False)
    (target / "steering.json").unlink()
    (target / "steering.json").symlink_to(tmp_path)
    with pytest.raises(UserError, match="files it did not write"):
        check_target(target, force=True)


def test_a_regular_file_is_refused_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "notes"
    target.write_text("keep")
    with pytest.raises(UserError, match="got the file"):
        check_target(target, force=True)
    assert target.read_text() == "keep"
    assert siblings(target) == ["notes"]


def test_the_run_output_dir_database_and_artifacts_are_protected(tmp_path: Path) -> None:
    out = tmp_path / "run"
    guard = protected_paths(str(out), f"sqlite:///{out / 'study.db'}", str(out / "artifacts"))
    for target, rule in [
        (out, "must not be or contain output_dir"),
        (tmp_path, "must not be or contain output_dir"),
        (out / "study.db", "must not be or contain the study database"),
        (out / "artifacts", "must not be or contain artifacts_dir"),
        (out / "artifacts" / "x", "must not lie inside artifacts_dir"),
    ]:
        with pytest.raises(UserError, match=rule):
            check_target(target, force=True, protected=guard)
    assert check_target(out / "bundle", force=False, protected=guard) == out / "bundle"


def test_a_target_that_became_unusable_while_exporting_is_refused_at_publish(
    tmp_path: Path,
) -> None:
    target = tmp_path / "bundle"
    tmp = staged(target)
    target.mkdir()
    (target / "mine.txt").write_text("arrived meanwhile")
    with pytest.raises(UserError, match=r"no \.hpo-bundle marker"):
        publish(tmp, target, force=True)
    assert (target / "mine.txt").read_text() == "arrived meanwhile"


def test_a_target_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        check_target(tmp_path / "afile" / "bundle", force=False)


def test_write_bundle_refuses_an_earlier_bundle_then_replaces_it_with_force(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from hpo.core.selection import pick_trial
    from hpo.export.bundle import STEERING_JSON, load_bundle
    from hpo.export.writer import write_bundle
    from tests.hpo_tests.run_tests.test_study import run_study, tiny_run

    study, worker = run_study(tiny_run(tiny_model_dir, tmp_path))
    trial = pick_trial(study, None)
    first = write_bundle(worker, study, trial, tmp_path / "bundle")
    listed = bundle_files(first)
    assert listed is not None
    meta = json.loads((first / STEERING_JSON).read_text())
    assert set(meta["sha256"]) | {STEERING_JSON} == set(listed)
    assert stat.S_IMODE(first.stat().st_mode) & 0o055 == 0o055 & ~_umask()
    before = (first / STEERING_JSON).read_bytes()
    with pytest.raises(UserError, match=r"already holds a bundle"):
        write_bundle(worker, study, trial, first)
    assert (first / STEERING_JSON).read_bytes() == before
    with pytest.raises(UserError, match="must not be or contain output_dir"):
        write_bundle(worker, study, trial, tmp_path, force=True)
    assert (tmp_path / "study.db").is_file()
    again = write_bundle(worker, study, trial, first, force=True)
    assert load_bundle(again).alpha == pytest.approx(meta["alpha"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_bundle_from_before_the_marker_is_replaced_with_force_only(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    (target / "vectors").mkdir(parents=True)
    (target / "vectors" / "v.safetensors").write_text("old")
    meta = {"package": {"name": "steering-hpo"}, "sha256": {"vectors/v.safetensors": "0" * 64}}
    (target / "steering.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="already holds a bundle"):
        check_target(target, force=False)
    publish(staged(target), target, force=True)
    assert (target / MARKER).is_file()
    assert not (target / "vectors" / "v.safetensors").exists()


def test_a_foreign_steering_json_does_not_make_a_folder_a_bundle(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "steering.json").write_text(json.dumps({"sha256": {}}))
    with pytest.raises(UserError, match=r"no \.hpo-bundle marker"):
        check_target(target, force=True)
