"""Manual search: hand out only the jobs queued beforehand (``add_job`` / ``schedy push``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._protocol import Decision, Exhausted, Scheduler, SchedulingState, TakeQueued, register

__all__ = ["ManualScheduler"]


@register
class ManualScheduler(Scheduler):
    """The original client's manual queue: no configuration, no members."""

    kind = "manual"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ManualScheduler:
        return cls()

    def to_config(self) -> dict[str, Any]:
        return {}

    def decide(self, state: SchedulingState) -> Decision:
        if state.queued is not None:
            return TakeQueued(state.queued.id)
        return Exhausted("the queue is empty; push jobs with experiment.add_job() or `schedy push`")
