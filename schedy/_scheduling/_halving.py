"""Asynchronous successive halving (ASHA) and Hyperband on top of it: the decision.

Li et al. 2020 ("A System for Massively Parallel Hyperparameter Tuning",
MLSys, arXiv 1810.05934), pull model: random configurations are trained rung
by rung, rung ``k`` being ``min_budget * reduction_factor**k`` units of
resource (epochs...) in total, the last rung ``max_budget``. When a worker
asks for a job, the configuration promoted is the best one of the highest
rung that has a configuration among the top ``1/reduction_factor`` of that
rung not promoted yet; failing that a new configuration starts at the
bottom rung. No worker ever waits for a rung to fill: the price is that a
few configurations are promoted that synchronous halving would not have
promoted, which the paper shows costs little.

Each configuration is one *member* and each rung one *generation*: a
promotion is a continuation (its parent is the configuration's job of the
rung below, its results copied so ``model_path`` follows), so the PBT
callbacks train it on from its checkpoint unchanged; the rung's total
resource is :meth:`SuccessiveHalvingScheduler.budget` (``job.budget``).
Nothing new is stored: a rung's ranking is read from the members' score
histories (``_history``), a configuration's bracket from its member index.

Hyperband (Li et al. 2018) runs several such brackets, bracket ``b``
starting its configurations at rung ``b`` (less aggressive early stopping);
configurations are dealt to brackets in a fixed interleaved cycle weighted
like Hyperband's ``n_s`` so each bracket spends about the same resource.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from .. import _values
from .._records import JobRecord, JobStatus, MemberRecord
from ..pbt import MAXIMIZE, Objective
from ..random import Distribution
from . import _history
from ._protocol import (
    CreateJob,
    Decision,
    EndMember,
    Exhausted,
    Scheduler,
    SchedulingState,
    TakeQueued,
    Wait,
    check_distributions,
    check_max_member_crashes,
    check_seed,
    config_object,
    distributions_from_json,
    distributions_to_json,
    oriented_score,
    register,
    sample,
)

__all__ = ["HyperbandScheduler", "SuccessiveHalvingScheduler"]


def _positive_number(value: Any, what: str) -> float:
    if not _values.is_number(value) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ValueError(f"{what} must be a finite number > 0, not {value!r}")
    return value  # type: ignore[no-any-return]


def _optional_count(value: Any, what: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{what} must be an int >= 1 or None, not {value!r}")
    return value


def rung_budgets(min_budget: float, max_budget: float, reduction_factor: int) -> list[float]:
    """The total resource of each rung: ``min_budget * eta**k`` below ``max_budget``, then
    ``max_budget`` itself (ints when both ends are ints, as epochs are)."""
    count = math.floor(math.log(max_budget / min_budget) / math.log(reduction_factor) + 1e-9)
    budgets: list[float] = [min_budget * reduction_factor**k for k in range(count)]
    budgets.append(max_budget)
    if isinstance(min_budget, int) and isinstance(max_budget, int):
        return [round(b) for b in budgets]
    return budgets


def bracket_cycle(rungs: int, brackets: int, reduction_factor: int) -> list[int]:
    """Which bracket each member index gets, repeating: Hyperband's ``n_s`` as weights.

    Bracket ``b`` skips ``b`` rungs and halves ``s = rungs - 1 - b`` times; Hyperband
    gives it ``ceil((s_max + 1) / (s + 1) * eta**s)`` configurations so every bracket
    spends about the same resource. The cycle interleaves them (smooth weighted
    round robin), so a small run already samples every bracket.
    """
    s_max = rungs - 1
    weights = [
        math.ceil((s_max + 1) / (s_max - b + 1) * reduction_factor ** (s_max - b))
        for b in range(brackets)
    ]
    total = sum(weights)
    current = [0] * brackets
    cycle = []
    for _ in range(total):
        for b in range(brackets):
            current[b] += weights[b]
        chosen = max(range(brackets), key=lambda b: (current[b], -b))
        current[chosen] -= total
        cycle.append(chosen)
    return cycle


@register
class SuccessiveHalvingScheduler(Scheduler):
    """ASHA's configuration (validated here) and its pull-model decision (one bracket)."""

    kind = "successive_halving"
    arguments: ClassVar[tuple[str, ...]] = (
        "objective",
        "result_name",
        "distributions",
        "min_budget",
        "max_budget",
        "reduction_factor",
        "max_configurations",
        "seed",
        "max_member_crashes",
    )
    #: How many brackets (Hyperband: several; successive halving: one).
    brackets: int = 1

    def __init__(
        self,
        objective: str,
        result_name: str,
        distributions: Mapping[str, Distribution],
        min_budget: float = 1,
        max_budget: float | None = None,
        reduction_factor: int = 3,
        max_configurations: int | None = None,
        seed: int | None = None,
        max_member_crashes: int = 3,
    ) -> None:
        if objective not in (Objective.MINIMIZE, Objective.MAXIMIZE):
            raise ValueError(
                f"objective must be schedy.pbt.MINIMIZE or schedy.pbt.MAXIMIZE, not {objective!r}"
            )
        self.objective = Objective(objective)
        if not isinstance(result_name, str) or not result_name:
            raise ValueError(
                "result_name must name the result to rank by (e.g. 'accuracy'), "
                f"not {result_name!r}"
            )
        self.result_name = result_name
        self.distributions = check_distributions(distributions, "distributions")
        if not self.distributions:
            raise ValueError("distributions must define at least one hyperparameter to search")
        self.min_budget = _positive_number(min_budget, "min_budget")
        if max_budget is None:
            raise ValueError(
                "max_budget is required: the total resource (e.g. epochs) a configuration "
                "trains at the top rung"
            )
        self.max_budget = _positive_number(max_budget, "max_budget")
        if self.max_budget < self.min_budget:
            raise ValueError(f"max_budget ({max_budget!r}) must be >= min_budget ({min_budget!r})")
        if (
            not isinstance(reduction_factor, int)
            or isinstance(reduction_factor, bool)
            or reduction_factor < 2
        ):
            raise ValueError(f"reduction_factor must be an int >= 2, not {reduction_factor!r}")
        self.reduction_factor = reduction_factor
        self.max_configurations = _optional_count(max_configurations, "max_configurations")
        self.seed = check_seed(seed)
        check_max_member_crashes(max_member_crashes)
        self.max_member_crashes = max_member_crashes
        self.budgets = rung_budgets(self.min_budget, self.max_budget, reduction_factor)
        self._cycle = bracket_cycle(len(self.budgets), self._bracket_count(), reduction_factor)

    def _bracket_count(self) -> int:
        return 1

    # -- configuration ---------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {
            "objective": self.objective.value,
            "result_name": self.result_name,
            "distributions": distributions_to_json(self.distributions),
            "min_budget": self.min_budget,
            "max_budget": self.max_budget,
            "reduction_factor": self.reduction_factor,
            "max_configurations": self.max_configurations,
            "seed": self.seed,
            "max_member_crashes": self.max_member_crashes,
        }

    @classmethod
    def _arguments_from(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        config = config_object(config, cls.kind)
        for required in ("objective", "result_name", "distributions", "max_budget"):
            if required not in config:
                raise ValueError(f"a {cls.kind} experiment's configuration needs {required!r}")
        return {
            "objective": config["objective"],
            "result_name": config["result_name"],
            "distributions": distributions_from_json(config["distributions"], "distributions"),
            "min_budget": config.get("min_budget", 1),
            "max_budget": config["max_budget"],
            "reduction_factor": config.get("reduction_factor", 3),
            "max_configurations": config.get("max_configurations"),
            "seed": config.get("seed"),
            "max_member_crashes": config.get("max_member_crashes", 3),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SuccessiveHalvingScheduler:
        return cls(**cls._arguments_from(config))

    # -- rungs and brackets ----------------------------------------------------
    def bracket(self, member: int) -> int:
        """The bracket of configuration (member) ``member``: fixed by its index."""
        return self._cycle[member % len(self._cycle)]

    def rung(self, member: int, generation: int) -> int:
        """The rung a member's job at ``generation`` trains to (its bracket skips some)."""
        return self.bracket(member) + generation

    def budget(self, member: int | None, generation: int | None) -> float | None:
        """``job.budget``: the total resource the model must have reached when the job ends.

        Measured along the lineage (epochs since the configuration started,
        not in this job), so a callback trains until its epoch counter equals it.
        """
        if member is None or generation is None:
            return None
        return self.budgets[min(self.rung(member, generation), len(self.budgets) - 1)]

    def _is_final(self, member: int, generation: int | None) -> bool:
        return generation is not None and self.rung(member, generation) >= len(self.budgets) - 1

    def check_new_job(self, hyperparameters: Mapping[str, Any]) -> None:
        missing = sorted(set(self.distributions) - set(hyperparameters))
        if missing:
            raise ValueError(
                "every job of this experiment needs the searched hyperparameters; "
                f"missing {missing}"
            )

    def score(self, results: Mapping[str, Any]) -> float | None:
        return oriented_score(results, self.result_name, self.objective == MAXIMIZE)

    def job_ended(
        self,
        member: MemberRecord,
        job: JobRecord,
        status: str,
        results: Mapping[str, Any],
        now: float,
    ) -> MemberRecord:
        """As for PBT; a configuration ends once it trained its bracket's top rung."""
        after = super().job_ended(member, job, status, results, now)
        if (
            status == JobStatus.DONE
            and after is not member
            and self._is_final(member.index, job.generation)
        ):
            after = after._replace(ended=True)
        return after

    # -- the decision ----------------------------------------------------------
    def promotable(self, members: list[MemberRecord]) -> MemberRecord | None:
        """The member to promote now: the best not-yet-promoted configuration among
        the top ``1/eta`` of the highest rung that has one (None: none)."""
        eta = self.reduction_factor
        top_rung = len(self.budgets) - 1
        by_bracket: dict[int, list[MemberRecord]] = {}
        for member in members:
            if member.head_generation is not None:
                by_bracket.setdefault(self.bracket(member.index), []).append(member)
        best: tuple[int, int, MemberRecord] | None = None  # (rung, -bracket, member)
        for bracket, group in by_bracket.items():
            for generation in range(top_rung - bracket - 1, -1, -1):
                rung = bracket + generation
                if best is not None and rung < best[0]:
                    break
                reached = [m for m in group if (m.head_generation or 0) >= generation]
                quota = len(reached) // eta
                if not quota:
                    continue
                keyed = []
                for m in reached:
                    if m.head_generation == generation:
                        score: float | None = m.score
                    else:  # promoted already; its score there is in its history
                        score = _history._parse(m.history).get(generation) if m.history else None
                        if score is None:
                            score = math.inf  # older than the history: it ranked on top
                    keyed.append((score is None, -(score or 0.0), m.index, m))
                keyed.sort(key=lambda item: item[:3])
                for _, _, _, m in keyed[:quota]:
                    waiting = (
                        m.head_generation == generation
                        and m.busy_id is None
                        and not m.ended
                        and m.crashes == 0
                    )
                    if waiting:
                        candidate = (rung, -bracket, m)
                        if best is None or candidate[:2] > best[:2]:
                            best = candidate
                        break
                if best is not None and best[0] == rung:
                    break
        return None if best is None else best[2]

    def decide(self, state: SchedulingState) -> Decision:
        members = state.members
        next_index = max((m.index for m in members), default=-1) + 1
        room = self.max_configurations is None or len(members) < self.max_configurations
        # A crashed job is retried first (from what it started with), or its
        # configuration retired once it keeps crashing.
        for member in members:
            if member.ready and member.crashes:
                if member.last_id is None:  # the crashed job was deleted
                    return EndMember(member.index, "its crashed job was deleted: nothing to retry")
                if member.crashes >= self.max_member_crashes:
                    return EndMember(
                        member.index,
                        f"its job crashed {member.crashes} times in a row "
                        f"(max_member_crashes={self.max_member_crashes})",
                    )
                last = state.load_job(member.last_id)
                return CreateJob(
                    last.hyperparameters,
                    state.start_results(last),
                    member=member.index,
                    generation=last.generation or 0,
                    parent_id=last.parent_id,
                )
        promoted = self.promotable(members)
        if promoted is not None:
            head = state.load_job(promoted.head_id or "")
            return CreateJob(
                head.hyperparameters,
                head.results,  # unchanged: model_path follows
                member=promoted.index,
                generation=(promoted.head_generation or 0) + 1,
                parent_id=head.id,
            )
        if room and state.queued is not None:
            return TakeQueued(state.queued.id, member=next_index, generation=0)
        if room:
            return CreateJob(sample(self.distributions, state.rng), member=next_index, generation=0)
        if any(m.busy_id is not None for m in members):
            return Wait("every configuration is running or waits for its rung to fill")
        return Exhausted(
            f"the experiment is finished ({self.max_configurations} configurations tried, "
            "none left to promote)",
            finish=True,
        )


@register
class HyperbandScheduler(SuccessiveHalvingScheduler):
    """Asynchronous Hyperband: ASHA in ``brackets`` brackets (default: every one)."""

    kind = "hyperband"
    arguments = (*SuccessiveHalvingScheduler.arguments, "brackets")

    def __init__(self, *args: Any, brackets: int | None = None, **kwargs: Any) -> None:
        self._brackets_wanted = _optional_count(brackets, "brackets")
        super().__init__(*args, **kwargs)
        count = len(self.budgets)
        if brackets is not None and brackets > count:
            raise ValueError(
                f"brackets must be at most the number of rungs ({count}: budgets "
                f"{self.budgets}), not {brackets!r}"
            )
        self.brackets = self._bracket_count()

    def _bracket_count(self) -> int:
        count = len(self.budgets)
        wanted = self._brackets_wanted
        return count if wanted is None else min(wanted, count)

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "brackets": self._brackets_wanted}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HyperbandScheduler:
        arguments = cls._arguments_from(config)
        return cls(**arguments, brackets=config.get("brackets"))
