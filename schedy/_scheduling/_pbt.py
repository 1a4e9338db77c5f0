"""Population Based Training (Jaderberg et al. 2017, arXiv 1711.09846): the decision.

A claim creates members from ``initial_distributions`` (hand-queued jobs
first) until the population is full; then it takes the ready member that
waited longest, ranks the members by their latest score (NaN/missing worst,
exact ties at random; members ahead judged at its generation, see
``_history``) and, in the bottom of the truncation, copies a random top
member (hyperparameters explored, results copied so the checkpoint follows);
otherwise the member continues. A member that never finished a job retries
it from the results it was created with; one that keeps crashing copies a
top member, or starts afresh, or is retired.

Populations of thousands: above :data:`RANK_SAMPLE` members the claimed
member (still exactly the ready one that waited longest, read through an
index) is ranked among a uniform sample of ``RANK_SAMPLE`` members drawn
with the decision's seeded RNG, and the truncation is taken within that
sample: it exploits when it is in the sample's bottom ``proportion`` and
copies a random member of the sample's top ``proportion`` -- truncation
selection on a ``RANK_SAMPLE``-member tournament (the PBT paper's "binary
tournament" is the same with 2). What changes against ranking everyone: a
member near the cut-off quantile is exploited with a probability instead of
surely (in the bottom fifth of a 64-member sample: a member at the
population's median with probability 2e-7, at its 30 % quantile 0.03, at
20 % 0.48, at 10 % 0.99), and a donor is a random member of a top fifth
estimated from 64 members. Everything else -- generation-relative judging,
ties, crashes, stragglers -- is the same code on the sample. ``synchronous``
PBT reads the whole population (its barrier is a minimum over every member).
"""

from __future__ import annotations

import operator
import random
from collections.abc import Mapping
from typing import Any, ClassVar

from .._records import MemberRecord
from ..pbt import (
    MAXIMIZE,
    ExploreStrategy,
    Objective,
    Truncate,
    _exploit_from_json,
    _explore_from_json,
)
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

__all__ = ["PBTScheduler"]

_RANK_KEY = operator.itemgetter(0, 1, 2)

#: Above this population a claim ranks the member it decides against a
#: seeded uniform sample of this many members, not the whole population
#: (see the module docstring): the claim's cost stays that of a population
#: of this size, and populations up to it are ranked exactly as before.
RANK_SAMPLE = 64


def _objective(objective: Any) -> Objective:
    if objective in (Objective.MINIMIZE, Objective.MAXIMIZE):
        return Objective(objective)
    raise ValueError(
        f"objective must be schedy.pbt.MINIMIZE or schedy.pbt.MAXIMIZE, not {objective!r}"
    )


@register
class PBTScheduler(Scheduler):
    """PBT's configuration (validated here, once) and its decision."""

    kind = "pbt"
    arguments: ClassVar[tuple[str, ...]] = (
        "objective",
        "result_name",
        "exploit",
        "explore",
        "initial_distributions",
        "population_size",
        "max_generations",
        "seed",
        "max_member_crashes",
        "synchronous",
    )

    def __init__(
        self,
        objective: str,
        result_name: str,
        exploit: Truncate,
        explore: Mapping[str, ExploreStrategy] | None = None,
        initial_distributions: Mapping[str, Distribution] | None = None,
        population_size: int | None = None,
        max_generations: int | None = None,
        seed: int | None = None,
        max_member_crashes: int = 3,
        synchronous: bool = False,
    ) -> None:
        self.objective = _objective(objective)
        if not isinstance(result_name, str) or not result_name:
            raise ValueError(
                "result_name must name the result to rank by (e.g. 'accuracy'), "
                f"not {result_name!r}"
            )
        if not isinstance(exploit, Truncate):
            raise TypeError(
                f"exploit must be a schedy.pbt exploit strategy such as Truncate(), not {exploit!r}"
            )
        if explore is None:
            explore = {}
        if not isinstance(explore, Mapping):
            raise TypeError(
                f"explore must be a dict of hyperparameter name -> strategy, not {explore!r}"
            )
        for key, strategy in explore.items():
            if not isinstance(strategy, ExploreStrategy):
                raise TypeError(
                    f"explore[{key!r}] = {strategy!r} is not an explore strategy: use "
                    "schedy.pbt.Perturb(), Resample(...) or Shift(...)"
                )
        self.result_name = result_name
        self.exploit = exploit
        self.explore: dict[str, ExploreStrategy] = dict(explore)
        self.initial_distributions = check_distributions(
            initial_distributions, "initial_distributions"
        )
        for what, value in (
            ("population_size", population_size),
            ("max_generations", max_generations),
        ):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{what} must be an int >= 1 or None, not {value!r}")
        if self.initial_distributions and population_size is None:
            raise ValueError(
                "initial_distributions needs population_size: how many members to create "
                "from it (e.g. population_size=20)"
            )
        for key, strategy in self.explore.items():
            if self.initial_distributions and key not in self.initial_distributions:
                raise ValueError(
                    f"explore names {key!r}, which initial_distributions does not define; "
                    f"known hyperparameters: {sorted(self.initial_distributions)}"
                )
            strategy._check_distribution(self.initial_distributions.get(key), key)
        check_max_member_crashes(max_member_crashes)
        self.population_size = population_size
        self.max_generations = max_generations
        self.seed = check_seed(seed)
        self.max_member_crashes = max_member_crashes
        if not isinstance(synchronous, bool):
            raise TypeError(f"synchronous must be True or False, not {synchronous!r}")
        self.synchronous = synchronous
        # The synchronous barrier is a minimum over every live member: it reads them all.
        self.member_sample = None if synchronous else RANK_SAMPLE

    # -- configuration ---------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {
            "objective": self.objective.value,
            "result_name": self.result_name,
            "exploit": self.exploit._to_json(),
            "explore": {k: s._to_json() for k, s in self.explore.items()},
            "initial_distributions": distributions_to_json(self.initial_distributions),
            "population_size": self.population_size,
            "max_generations": self.max_generations,
            "seed": self.seed,
            "max_member_crashes": self.max_member_crashes,
            "synchronous": self.synchronous,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PBTScheduler:
        config = config_object(config, cls.kind)
        for required in ("objective", "result_name", "exploit"):
            if required not in config:
                raise ValueError(f"a PBT experiment's configuration needs {required!r}")
        explore = config.get("explore") or {}
        if not isinstance(explore, Mapping):
            raise ValueError(f"explore must be an object of name: strategy, not {explore!r}")
        return cls(
            config["objective"],
            config["result_name"],
            exploit=_exploit_from_json(config["exploit"]),
            explore={k: _explore_from_json(v) for k, v in explore.items()},
            initial_distributions=distributions_from_json(
                config.get("initial_distributions"), "initial_distributions"
            ),
            population_size=config.get("population_size"),
            max_generations=config.get("max_generations"),
            seed=config.get("seed"),
            max_member_crashes=config.get("max_member_crashes", 3),
            synchronous=config.get("synchronous", False),
        )

    # -- ranking ---------------------------------------------------------------
    def check_new_job(self, hyperparameters: Mapping[str, Any]) -> None:
        rng = random.Random(0)
        for key, strategy in self.explore.items():
            if key not in hyperparameters:
                raise ValueError(
                    f"this PBT experiment explores {key!r}, so every job needs that "
                    f"hyperparameter; got {sorted(hyperparameters)}"
                )
            try:
                strategy.explore(hyperparameters[key], rng)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"hyperparameter {key!r} = {hyperparameters[key]!r} cannot be explored "
                    f"by {strategy!r}: {error}"
                ) from None

    def score(self, results: Mapping[str, Any]) -> float | None:
        return oriented_score(results, self.result_name, self.objective == MAXIMIZE)

    def is_final_generation(self, generation: int | None) -> bool:
        if self.max_generations is None or generation is None:
            return False
        return generation + 1 >= self.max_generations

    def _can_follow(self, member: Any) -> bool:
        """Whether a job may continue ``member``'s head (it is below the last generation)."""
        return member.head_id is not None and not self.is_final_generation(member.head_generation)

    @staticmethod
    def _score_at(member: Any, generation: int | None) -> float | None:
        """``member``'s score at ``generation`` when it is ahead and still has it, else
        its latest (as :meth:`rank` judges it)."""
        score: float | None = member.score
        if generation is not None and (member.head_generation or 0) > generation:
            found, earlier = _history.score_at(member.history, generation)
            if found:
                score = earlier
        return score

    def rank(
        self, members: list[Any], rng: random.Random, generation: int | None = None
    ) -> list[Any]:
        """Evaluated members, best first; unscored last; exact ties in random order.

        A member ahead of ``generation`` (the generation of the member being
        decided) is judged by its score at that generation when it still has
        it: with fewer workers than members, comparing against models trained
        longer would push the member that waited longest to the bottom for
        being behind, not for being worse.
        """
        keyed = []
        for member in members:
            if member.head_id is None:
                continue
            score = self._score_at(member, generation)
            keyed.append((score is None, -(score or 0.0), rng.random(), member))
        keyed.sort(key=_RANK_KEY)
        return [item[3] for item in keyed]

    def explored(
        self,
        hyperparameters: Mapping[str, Any],
        state: SchedulingState,
        member: MemberRecord,
        generation: int,
    ) -> dict[str, Any]:
        """The hyperparameters an exploit of ``member`` trains with at ``generation``:
        the copied ones, each varied by its ``explore`` strategy (PB2 overrides this)."""
        explored = dict(hyperparameters)
        for key, strategy in self.explore.items():
            if key in explored:
                explored[key] = strategy.explore(explored[key], state.rng)
        return explored

    # -- the decision ----------------------------------------------------------
    def decide(self, state: SchedulingState) -> Decision:
        members = state.members
        next_index = state.next_index
        if state.queued is not None:
            return TakeQueued(state.queued.id, member=next_index, generation=0)
        size = self.population_size
        if size is not None and state.population < size and self.initial_distributions:
            return CreateJob(
                sample(self.initial_distributions, state.rng), member=next_index, generation=0
            )
        if not members:
            return Exhausted(
                "the population is empty: give initial_distributions and population_size, "
                "or add the initial jobs with experiment.add_job() / `schedy push`"
            )
        ready = [m for m in members if m.ready]
        if not ready:
            if all(m.ended for m in members):
                done = "max_generations reached" if self.max_generations else "all members ended"
                return Exhausted(f"the experiment is finished ({done})", finish=True)
            return Wait("every population member is busy")
        if self.synchronous:
            # Ray's synch=True: a member decides at generation g once every live
            # member has finished g. The laggard holding the barrier is ready
            # (then it goes first), running (its job ends or its lease expires,
            # making it ready) or retired (then it no longer counts): no deadlock.
            barrier = min(
                (-1 if m.head_generation is None else m.head_generation)
                for m in members
                if not m.ended
            )
            released = [
                m
                for m in ready
                if (-1 if m.head_generation is None else m.head_generation) <= barrier
            ]
            if not released:
                behind = sorted(
                    m.index
                    for m in members
                    if not m.ended
                    and (-1 if m.head_generation is None else m.head_generation) == barrier
                )
                return Wait(
                    f"synchronous PBT: members {behind} have not finished generation {barrier} yet"
                )
            ready = released
        member = min(ready, key=lambda m: (m.ready_since, m.index))
        ranked = self.rank(members, state.rng, member.head_generation)
        cutoff = self.exploit._cutoff(len(ranked))
        # A member at its final generation cannot be copied: its copy would
        # have to train past max_generations.
        top = [m for m in ranked[:cutoff] if m.index != member.index and self._can_follow(m)]
        keeps_crashing = member.crashes >= self.max_member_crashes
        if keeps_crashing and not top:
            # The crashing member is itself the top one: copy the best other.
            top = [m for m in ranked if m.index != member.index and self._can_follow(m)][:1]
        in_bottom = (
            any(m.index == member.index for m in ranked[len(ranked) - cutoff :])
            if cutoff
            else False
        )
        if in_bottom and not top and not keeps_crashing:
            own = member.score
            better = [
                m
                for m in ranked[:cutoff]
                if m.index != member.index
                and (score := self._score_at(m, member.head_generation)) is not None
                and (own is None or score > own)
            ]
            if better and not any(
                self._can_follow(m) for m in ranked[:cutoff] if m.index != member.index
            ):
                # A straggler: every better member has finished (max_generations),
                # so nobody can be copied and its own schedule is known to be
                # behind theirs at equal progress. Copying only their
                # hyperparameters would keep training the worse model; the
                # finished members already hold the result -- stop spending on it.
                return EndMember(
                    member.index,
                    f"straggler: in the bottom at generation {member.head_generation} "
                    "while every better member has finished its schedule, so there is "
                    "nothing to copy",
                )
        if (in_bottom or keeps_crashing) and top:
            chosen = state.rng.choice(top)
            source = state.load_job(chosen.head_id or "")
            hyperparameters = self.explored(
                source.hyperparameters, state, member, (chosen.head_generation or 0) + 1
            )
            return CreateJob(
                hyperparameters,
                source.results,  # unchanged: the store writes its stored text back
                member=member.index,
                # The copy continues the source's training: its generation counts
                # the jobs behind the model state, whoever ran them.
                generation=(chosen.head_generation or 0) + 1,
                parent_id=source.id,
                exploited_from=source.id,
                source_member=chosen.index,
            )
        generation = 0 if member.head_generation is None else member.head_generation + 1
        if member.head_id is not None:
            head = state.load_job(member.head_id)
            return CreateJob(
                head.hyperparameters,
                head.results,
                member=member.index,
                generation=generation,
                parent_id=head.id,
            )
        # The member never finished a job: retry its first configuration,
        # unless it keeps crashing (then start it afresh, or retire it).
        if keeps_crashing or member.last_id is None:
            if self.initial_distributions:
                return CreateJob(
                    sample(self.initial_distributions, state.rng),
                    member=member.index,
                    generation=0,
                )
            if member.last_id is None:  # its job was deleted: nothing to retry
                why = "its first job was deleted"
            else:
                why = (
                    f"its first job crashed {member.crashes} times in a row "
                    f"(max_member_crashes={self.max_member_crashes})"
                )
            return EndMember(
                member.index, f"{why} and nothing can replace it (no initial_distributions)"
            )
        last = state.load_job(member.last_id)
        return CreateJob(
            last.hyperparameters,
            # What the crashed job started from, not what it wrote before
            # crashing (e.g. the path of a checkpoint it never saved).
            state.start_results(last),
            member=member.index,
            generation=last.generation or 0,
            parent_id=last.parent_id,
            exploited_from=last.exploited_from,
        )
