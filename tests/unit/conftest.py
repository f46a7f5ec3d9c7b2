"""Every unit test starts without GUNITUNE_* (or a metrics directory) from the outer environment."""

from __future__ import annotations

import pytest

from gunitune.core.settings import Settings


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GUNITUNE_* from the outer environment."""
    for setting in Settings.declared():
        monkeypatch.delenv(setting.key, raising=False)
    # Metrics in the test process are single-process unless a test exports a directory.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
