"""Random search: queued jobs first, then fresh random configurations forever."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..random import Distribution
from ._protocol import (
    CreateJob,
    Decision,
    Scheduler,
    SchedulingState,
    TakeQueued,
    check_distributions,
    check_seed,
    config_object,
    distributions_from_json,
    distributions_to_json,
    register,
    sample,
)

__all__ = ["RandomScheduler"]


@register
class RandomScheduler(Scheduler):
    """Draws each job from ``distributions``; ``seed`` makes the draws reproducible."""

    kind = "random"
    arguments = ("distributions", "seed")

    def __init__(self, distributions: Mapping[str, Distribution], seed: int | None = None) -> None:
        self.distributions = check_distributions(distributions, "distributions")
        self.seed = check_seed(seed)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RandomScheduler:
        config = config_object(config, cls.kind)
        return cls(
            distributions_from_json(config.get("distributions"), "distributions"),
            seed=config.get("seed"),
        )

    def to_config(self) -> dict[str, Any]:
        return {"distributions": distributions_to_json(self.distributions), "seed": self.seed}

    def decide(self, state: SchedulingState) -> Decision:
        if state.queued is not None:
            return TakeQueued(state.queued.id)
        return CreateJob(sample(self.distributions, state.rng))
