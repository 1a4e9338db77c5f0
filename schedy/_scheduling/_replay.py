"""Replay: retrain a schedule PBT found, from scratch, one step per job.

The experiment holds the source schedule's steps (their hyperparameters, in
order) and hands out one job per step on a single member, each continuing
that member's own previous job -- its checkpoint, never the source's -- so
one worker with the usual callback or ``next_job`` loop trains one model
from nothing along the found schedule. A crashed step is retried (from its
own parent); after ``max_member_crashes`` crashes in a row the replay ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import _values
from ..pbt import MAXIMIZE, Objective
from ._protocol import (
    CreateJob,
    Decision,
    EndMember,
    Exhausted,
    Scheduler,
    SchedulingState,
    Wait,
    check_max_member_crashes,
    config_object,
    oriented_score,
    register,
)

__all__ = ["ReplayScheduler"]


@register
class ReplayScheduler(Scheduler):
    """Hands out ``steps`` (each ``{"hyperparameters": {...}}``) in order on member 0."""

    kind = "replay"
    arguments = ("steps", "source", "objective", "result_name", "max_member_crashes")

    def __init__(
        self,
        steps: Sequence[Mapping[str, Any]],
        source: Mapping[str, Any] | None = None,
        objective: str | None = None,
        result_name: str | None = None,
        max_member_crashes: int = 3,
    ) -> None:
        if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
            raise ValueError("a replay needs the schedule's steps: a non-empty list")
        checked = []
        for index, entry in enumerate(steps):
            hyperparameters = entry.get("hyperparameters") if isinstance(entry, Mapping) else None
            if not isinstance(hyperparameters, Mapping):
                raise ValueError(
                    f"replay step {index} must be an object with 'hyperparameters', not {entry!r}"
                )
            checked.append(
                {"hyperparameters": _values.normalize_mapping(hyperparameters, f"steps[{index}]")}
            )
        if objective is not None and objective not in (Objective.MINIMIZE, Objective.MAXIMIZE):
            raise ValueError(f"objective must be 'min', 'max' or None, not {objective!r}")
        if (objective is None) != (result_name is None):
            raise ValueError("give both objective and result_name, or neither")
        check_max_member_crashes(max_member_crashes)
        self.steps: list[dict[str, Any]] = checked
        self.source = dict(source or {})
        self.objective = None if objective is None else Objective(objective)
        self.result_name = result_name
        self.max_member_crashes = max_member_crashes

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ReplayScheduler:
        config = config_object(config, cls.kind)
        return cls(
            config.get("steps") or [],
            source=config.get("source"),
            objective=config.get("objective"),
            result_name=config.get("result_name"),
            max_member_crashes=config.get("max_member_crashes", 3),
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "source": self.source,
            "objective": None if self.objective is None else self.objective.value,
            "result_name": self.result_name,
            "max_member_crashes": self.max_member_crashes,
        }

    def score(self, results: Mapping[str, Any]) -> float | None:
        return oriented_score(results, self.result_name, self.objective == MAXIMIZE)

    def is_final_generation(self, generation: int | None) -> bool:
        return generation is not None and generation + 1 >= len(self.steps)

    def decide(self, state: SchedulingState) -> Decision:
        if not state.members:
            return CreateJob(dict(self.steps[0]["hyperparameters"]), member=0, generation=0)
        member = state.members[0]
        if member.ended:
            return Exhausted("the replay is finished (every step trained)", finish=True)
        if member.busy_id is not None:
            return Wait("the replay's one job is running (a schedule is trained in order)")
        if member.crashes >= self.max_member_crashes:
            return EndMember(
                member.index,
                f"a step crashed {member.crashes} times in a row "
                f"(max_member_crashes={self.max_member_crashes})",
            )
        step = 0 if member.head_generation is None else member.head_generation + 1
        results: dict[str, Any] = {}
        if member.head_id is not None:
            results = state.load_job(member.head_id).results
        return CreateJob(
            dict(self.steps[step]["hyperparameters"]),
            results,
            member=member.index,
            generation=step,
            parent_id=member.head_id,
        )
