"""Fixtures of the in-process orchestration tests (tests/support/fakes.py has the fakes themselves)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from fakes import Clock, Events, kopf_events


@pytest.fixture
async def events() -> AsyncIterator[Events]:
    """The Events the reconcilers post, read off the queue kopf's poster would drain."""
    with kopf_events() as captured:
        yield captured


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The reconcilers read time.monotonic() for their intervals; this moves it on without sleeping."""
    fake = Clock(time.monotonic)
    monkeypatch.setattr(time, "monotonic", fake)
    return fake
