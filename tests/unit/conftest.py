"""Every unit test starts without GUNITUNE_* from the outer environment or a worker runtime."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gunitune import runtime
from gunitune.core.settings import Settings


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No GUNITUNE_* from the outer environment, no worker runtime left behind."""
    for setting in Settings.declared():
        monkeypatch.delenv(setting.key, raising=False)
    runtime.unregister()
    yield
    runtime.unregister()
