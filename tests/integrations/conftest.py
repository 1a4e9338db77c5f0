"""Fixtures shared by the integration tests: a job stand-in that needs no store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


class StubJob:
    """What the integrations use of a :class:`schedy.Job`; ``put()`` snapshots the results."""

    def __init__(
        self,
        job_id: str,
        hyperparameters: dict[str, Any] | None = None,
        results: dict[str, Any] | None = None,
    ) -> None:
        self.id = job_id
        self.hyperparameters = dict(hyperparameters or {})
        self.results: dict[str, Any] = dict(results or {})
        self.pushed: list[dict[str, Any]] = []

    def put(self) -> None:
        self.pushed.append(dict(self.results))


@pytest.fixture
def make_job() -> Callable[..., StubJob]:
    """``make_job('id', {'lr': 0.1}, results={...})`` -> a stub job."""
    return StubJob


@pytest.fixture(autouse=True)
def _no_checkpoint_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their checkpoint folder: a developer's $SCHEDY_CHECKPOINT_DIR stays out."""
    monkeypatch.delenv("SCHEDY_CHECKPOINT_DIR", raising=False)
