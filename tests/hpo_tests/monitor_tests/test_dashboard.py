"""`hpo dashboard`: optuna-dashboard has no authentication, so anything but loopback is warned."""

from __future__ import annotations

from hpo.monitor.dashboard import exposure_warning


def test_only_loopback_is_quiet() -> None:
    assert exposure_warning("127.0.0.1", 8080) is None
    warning = exposure_warning("0.0.0.0", 8080)
    assert warning is not None and "no authentication" in warning and "0.0.0.0:8080" in warning
