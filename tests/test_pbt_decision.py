"""Table-driven tests of the pure PBT scheduling decision (no storage)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import schedy
from schedy._records import JobRecord, MemberRecord
from schedy._scheduling import CreateJob, EndMember, Exhausted, SchedulingState, TakeQueued, Wait


def _experiment(**kwargs: object) -> schedy.PopulationBasedTraining:
    options: dict[str, object] = dict(
        exploit=schedy.pbt.Truncate(0.25),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={
            "lr": schedy.random.Uniform(0.1, 1.0),
            "layers": schedy.random.Constant(2),
        },
        population_size=4,
    )
    options.update(kwargs)
    objective = options.pop("objective", schedy.pbt.MAXIMIZE)
    return schedy.PopulationBasedTraining("e", objective, "acc", **options)  # type: ignore[arg-type]


def _members(
    scores: list[float | None], busy: set[int] = frozenset(), **extra: object
) -> list[MemberRecord]:
    return [
        MemberRecord(
            index=i,
            head_id=f"h{i}",
            head_generation=3,
            score=score,
            busy_id=f"b{i}" if i in busy else None,
            last_id=f"h{i}",
            ready_since=i,
            **extra,  # type: ignore[arg-type]
        )
        for i, score in enumerate(scores)
    ]


def _jobs(count: int) -> dict[str, JobRecord]:
    return {
        f"h{i}": JobRecord(
            id=f"h{i}",
            experiment="e",
            status="DONE",
            hyperparameters={"lr": 0.1 * (i + 1), "layers": 2},
            results={"acc": 0.0, "model_path": f"ckpt/h{i}"},
            member=i,
            generation=3,
        )
        for i in range(count)
    }


def _state(
    members: list[MemberRecord], seed: int = 0, queued: JobRecord | None = None
) -> SchedulingState:
    jobs = _jobs(len(members))
    return SchedulingState(
        queued=queued,
        members=members,
        load_job=jobs.__getitem__,
        rng=random.Random(seed),
    )


def test_creates_members_until_population_size() -> None:
    decision = _experiment()._scheduler.decide(_state(_members([0.5, 0.4])))
    assert isinstance(decision, CreateJob)
    assert decision.member == 2 and decision.generation == 0 and decision.parent_id is None
    assert 0.1 <= decision.hyperparameters["lr"] < 1.0 and decision.hyperparameters["layers"] == 2


def test_queued_job_comes_first_as_new_member() -> None:
    queued = JobRecord(
        id="q", experiment="e", status="QUEUED", hyperparameters={"lr": 1.0}, results={}
    )
    decision = _experiment()._scheduler.decide(_state(_members([0.5] * 4), queued=queued))
    assert decision == TakeQueued("q", member=4, generation=0)


@pytest.mark.parametrize(
    ("scores", "ready", "source"),
    [
        # member 3 is worst of 4 -> bottom quarter -> copies the top quarter (member 0)
        ([0.9, 0.5, 0.4, 0.1], 3, "h0"),
        ([0.9, 0.5, 0.4, 0.1], 0, None),
        ([0.9, 0.5, 0.4, 0.1], 2, None),
        ([0.1, 0.4, 0.5, 0.9], 0, "h3"),
        # missing/NaN scores (None) rank worst
        ([None, 0.5, 0.4, 0.1], 0, "h1"),
        ([0.2, None, 0.4, 0.1], 3, None),
    ],
)
def test_truncation_table(scores: list[float | None], ready: int, source: str | None) -> None:
    exploits = source is not None
    experiment = _experiment()
    members = _members(scores, busy={i for i in range(4) if i != ready})
    decision = experiment._scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.member == ready
    assert (decision.exploited_from is not None) == exploits
    if exploits:
        assert decision.exploited_from == source and decision.parent_id == source
        assert decision.results["model_path"] == f"ckpt/{source}"  # the better checkpoint follows
        copied = 0.1 * (int(source[1]) + 1)
        assert decision.hyperparameters["lr"] != pytest.approx(copied)  # explored
        assert 0.8 * copied <= decision.hyperparameters["lr"] <= 1.2 * copied
        assert decision.hyperparameters["layers"] == 2  # not explored
    else:
        assert decision.parent_id == f"h{ready}"
        assert decision.hyperparameters == {"lr": pytest.approx(0.1 * (ready + 1)), "layers": 2}
    assert decision.generation == 4


@pytest.mark.parametrize(
    ("objective", "results", "score"),
    [
        (schedy.pbt.MAXIMIZE, {"acc": 0.7}, 0.7),
        (schedy.pbt.MINIMIZE, {"acc": 0.7}, -0.7),  # stored so that higher is better
        (schedy.pbt.MAXIMIZE, {"acc": float("nan")}, None),
        (schedy.pbt.MAXIMIZE, {"acc": "high"}, None),
        (schedy.pbt.MAXIMIZE, {"acc": True}, None),
        (schedy.pbt.MAXIMIZE, {}, None),
        (schedy.pbt.MINIMIZE, {"acc": float("inf")}, float("-inf")),
    ],
)
def test_score_orientation(objective: str, results: dict[str, object], score: float | None) -> None:
    assert _experiment(objective=objective)._scheduler.score(results) == score


@pytest.mark.parametrize("size", [2, 3, 4])
def test_small_populations_have_a_bottom_and_a_top(size: int) -> None:
    scores = [1.0 - i / size for i in range(size)]
    worst = size - 1
    members = _members(scores, busy=set(range(worst)))
    decision = _experiment(population_size=size)._scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.exploited_from == "h0"


def test_exact_ties_are_broken_at_random() -> None:
    """A symmetric population still exploits, with every member a possible source."""
    sources: Counter[str | None] = Counter()
    for seed in range(200):
        members = _members([0.5, 0.5, 0.5, 0.5], busy={1, 2, 3})
        decision = _experiment()._scheduler.decide(_state(members, seed=seed))
        assert isinstance(decision, CreateJob)
        sources[decision.exploited_from] += 1
    assert sources[None] > 0  # sometimes member 0 is not bottom
    assert {"h1", "h2", "h3"} <= set(sources)  # and any other member can be the source


def test_ready_member_that_waited_longest_goes_first() -> None:
    members = _members([0.5, 0.6, 0.7, 0.8])
    members = [m._replace(ready_since=seq) for m, seq in zip(members, [5, 2, 9, 7])]
    decision = _experiment()._scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.member == 1


def test_all_busy_waits_and_all_ended_finishes() -> None:
    assert isinstance(
        _experiment()._scheduler.decide(_state(_members([0.1] * 4, busy={0, 1, 2, 3}))), Wait
    )
    decision = _experiment()._scheduler.decide(_state(_members([0.1] * 4, ended=True)))
    assert isinstance(decision, Exhausted) and decision.finish


def test_empty_population_without_distributions_is_exhausted() -> None:
    experiment = schedy.PopulationBasedTraining("e", "max", "acc", schedy.pbt.Truncate())
    decision = experiment._scheduler.decide(_state([]))
    assert isinstance(decision, Exhausted) and "add_job" in decision.reason


@pytest.mark.parametrize(("crashes", "source"), [(0, None), (2, None), (3, "h1")])
def test_crashing_top_member_copies_the_best_other(crashes: int, source: str | None) -> None:
    members = _members([0.9, 0.8, 0.7, 0.6], busy={1, 2, 3})
    members[0] = members[0]._replace(crashes=crashes)
    decision = _experiment()._scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.member == 0
    assert decision.exploited_from == source


def test_crashing_member_copies_the_best_other_member() -> None:
    members = _members([0.9, 0.8, 0.7, 0.6], busy={0, 2, 3})
    members[1] = members[1]._replace(crashes=3)
    decision = _experiment()._scheduler.decide(_state(members))
    assert (
        isinstance(decision, CreateJob) and decision.member == 1 and decision.exploited_from == "h0"
    )


def test_member_without_good_job_retries_or_is_retired() -> None:
    retry = MemberRecord(index=0, last_id="h0", crashes=1)
    decision = _experiment(population_size=1)._scheduler.decide(_state([retry]))
    assert isinstance(decision, CreateJob) and decision.hyperparameters["lr"] == pytest.approx(0.1)
    hopeless = MemberRecord(index=0, last_id="h0", crashes=3)
    no_dists = schedy.PopulationBasedTraining(
        "e", "max", "acc", schedy.pbt.Truncate(), population_size=1
    )
    retired = no_dists._scheduler.decide(_state([hopeless]))
    assert isinstance(retired, EndMember)
    assert retired.reason == (
        "its first job crashed 3 times in a row (max_member_crashes=3) and nothing can "
        "replace it (no initial_distributions)"
    )
    fresh = _experiment(population_size=1)._scheduler.decide(_state([hopeless]))
    assert isinstance(fresh, CreateJob) and fresh.generation == 0 and fresh.parent_id is None


def test_seeded_decisions_are_reproducible() -> None:
    experiment = _experiment(seed=7)

    def decide(claims: int) -> object:
        members = _members([0.5, 0.5, 0.5, 0.5], busy={1, 2, 3})
        return experiment._scheduler.decide(
            SchedulingState(None, members, _jobs(4).__getitem__, experiment._scheduler.rng(claims))
        )

    assert decide(3) == decide(3)
    assert len({repr(decide(claims)) for claims in range(20)}) > 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(objective="up"), ValueError, "MINIMIZE or schedy.pbt.MAXIMIZE"),
        (dict(exploit=0.2), TypeError, "exploit strategy"),
        (dict(population_size=0), ValueError, "population_size"),
        (dict(population_size=None), ValueError, "needs population_size"),
        (dict(max_generations=0), ValueError, "max_generations"),
        (dict(explore={"momentum": schedy.pbt.Perturb()}), ValueError, "does not define"),
        (dict(explore={"lr": 0.5}), TypeError, "not an explore strategy"),
        (dict(initial_distributions={"lr": [1, 2]}), TypeError, "not a distribution"),
        (dict(seed="x"), TypeError, "seed"),
    ],
)
def test_invalid_pbt_arguments(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _experiment(**kwargs)


def test_truncate_too_large_is_rejected() -> None:
    with pytest.raises(ValueError):
        schedy.pbt.Truncate(0.9)


def test_exploit_continues_the_source_generation_and_skips_final_members() -> None:
    experiment = _experiment(max_generations=6)
    members = _members([0.9, 0.5, 0.4, 0.1], busy={0, 1, 2})
    members[0] = members[0]._replace(head_generation=4)
    members[3] = members[3]._replace(head_generation=1)
    decision = experiment._scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.exploited_from == "h0"
    assert decision.generation == 5  # the source's generation + 1, not the member's
    # final generation: can no longer be copied
    members[0] = members[0]._replace(head_generation=5, ended=True)
    decision = experiment._scheduler.decide(_state(members))
    # Nothing to copy and every better member finished: a straggler, ended
    # (see the straggler tests at the end of this file).
    assert isinstance(decision, EndMember) and decision.member == 3


def test_members_ahead_are_judged_at_the_ready_members_generation() -> None:
    """With fewer workers than members, being behind must not count as being worse."""
    from schedy._scheduling import _history

    members = _members([0.5, 0.9, 0.8, 0.7], busy={1, 2, 3})
    for i, member in enumerate(members[1:], start=1):  # ahead by one job; worse a job ago
        history = _history.extend(_history.extend(None, 2, 0.1), 3, 0.2)
        history = _history.extend(history, 4, member.score)
        members[i] = member._replace(head_generation=4, history=history)
    decision = _experiment()._scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.exploited_from is None  # best at gen 3
    # no history: compared by their latest score
    members[1:] = [member._replace(history=None) for member in members[1:]]
    decision = _experiment()._scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.exploited_from is not None


@pytest.mark.parametrize(
    ("pairs", "generation", "expected"),
    [
        ([], 3, (False, None)),
        ([(1, 0.1), (2, 0.2)], 3, (True, 0.2)),
        ([(1, 0.1), (2, 0.2)], 1, (True, 0.1)),
        ([(1, 0.1), (2, None)], 2, (True, None)),
        ([(2, 0.2)], 1, (False, None)),
    ],
)
def test_history_score_at(
    pairs: list[tuple[int, float | None]], generation: int, expected: tuple[bool, float | None]
) -> None:
    from schedy._scheduling import _history

    text = None
    for gen, score in pairs:
        text = _history.extend(text, gen, score)
    assert _history.score_at(text, generation) == expected


def test_history_keeps_the_last_generations_and_rewinds_on_a_copy() -> None:
    from schedy._scheduling import _history

    text = None
    for generation in range(20):
        text = _history.extend(text, generation, float(generation))
    assert _history.score_at(text, 11) == (False, None)  # older than the kept window
    assert _history.score_at(text, 12) == (True, 12.0)
    rewound = _history.extend(text, 15, -1.0)  # a copy continued an earlier lineage
    assert _history.score_at(rewound, 19) == (True, -1.0)


# -- synchronous PBT (synchronous=True): the generation barrier ------------------------


def _sync(**kwargs: object) -> schedy.PopulationBasedTraining:
    return _experiment(synchronous=True, **kwargs)


def _at(
    generations: list[int | None], busy: set[int] | None = None, **extra: object
) -> list[MemberRecord]:
    scores: list[float | None] = [0.9, 0.5, 0.4, 0.1]
    members = _members(scores[: len(generations)], busy=busy or set(), **extra)
    return [
        m._replace(head_generation=g, head_id=None if g is None else m.head_id)
        for m, g in zip(members, generations)
    ]


@pytest.mark.parametrize(
    ("generations", "busy", "ended", "expected"),
    [
        # Member 3 still runs generation 3: the others, done with 3, wait for it.
        ([3, 3, 3, 2], {3}, set(), Wait),
        # Its job crashed (or its lease expired: the same transition): it is ready
        # again and holds the barrier, so it goes first.
        ([3, 3, 3, 2], set(), set(), 3),
        # It was retired (kept crashing): no longer waited for.
        ([3, 3, 3, 2], set(), {3}, 0),
        # Everyone finished generation 3: the barrier is open.
        ([3, 3, 3, 3], set(), set(), 0),
        # A member that never finished a job holds the barrier at -1 and is retried first.
        ([3, 3, 3, None], set(), set(), 3),
        # Asynchronous members ahead (4) wait for the laggards at 3 to move.
        ([4, 3, 4, 3], {1, 3}, set(), Wait),
    ],
    ids=["waits", "crash-releases", "retired-releases", "open", "never-finished", "ahead-wait"],
)
def test_synchronous_barrier(
    generations: list[int | None], busy: set[int], ended: set[int], expected: object
) -> None:
    members = [m._replace(ended=m.index in ended) for m in _at(generations, busy)]
    if generations[3] is None:
        members[3] = members[3]._replace(last_id="h3", crashes=1)
    decision = _sync()._scheduler.decide(_state(members))
    if expected is Wait:
        assert isinstance(decision, Wait) and "synchronous" in decision.reason
    else:
        assert isinstance(decision, CreateJob) and decision.member == expected


def test_synchronous_barrier_release_on_crash_through_the_transitions() -> None:
    """job_ended(CRASHED) -- also what a lease expiry does -- releases the barrier."""
    scheduler = _sync()._scheduler
    members = _at([3, 3, 3, 2], busy={3})
    assert isinstance(scheduler.decide(_state(members)), Wait)
    job = JobRecord("b3", "e", "RUNNING", {}, {}, member=3, generation=3)
    members[3] = scheduler.job_ended(members[3], job, "CRASHED", {}, now=10.0)
    decision = scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.member == 3
    # Retired after crashing too often: the others go on.
    members[3] = scheduler.member_retired(members[3], "crashed 3 times in a row")
    assert members[3].ended and members[3].ended_reason == "crashed 3 times in a row"
    decision = scheduler.decide(_state(members))
    assert isinstance(decision, CreateJob) and decision.member != 3


def test_synchronous_is_stored() -> None:
    from schedy._scheduling import PBTScheduler

    scheduler = _sync()._scheduler
    assert PBTScheduler.from_config(scheduler.to_config()).synchronous is True
    legacy = {k: v for k, v in scheduler.to_config().items() if k != "synchronous"}
    assert PBTScheduler.from_config(legacy).synchronous is False
    with pytest.raises(TypeError, match="synchronous"):
        _experiment(synchronous="yes")


# -- stragglers: a bottom member nobody can be copied for --------------------------------


@pytest.mark.parametrize(
    ("scores", "finished", "expected"),
    [
        # Every better member finished: the straggler is retired.
        ([0.9, 0.5, 0.4, 0.1], {0}, EndMember),
        # A better member that can still be copied: a normal exploit.
        ([0.9, 0.5, 0.4, 0.1], set(), "exploit"),
        # Tied with the finished ones at equal progress: not worse, it continues.
        ([0.1, 0.1, 0.1, 0.1], {0, 1, 2}, "continue"),
        # Not in the bottom: it continues whatever the others did.
        ([0.1, 0.5, 0.4, 0.9], {0, 1, 2}, "continue"),
    ],
    ids=["retired", "exploit", "tie-continues", "top-continues"],
)
def test_straggler_rule(scores: list[float | None], finished: set[int], expected: object) -> None:
    experiment = _experiment(max_generations=6)
    members = _members(scores, busy={1, 2})
    members = [
        m._replace(head_generation=5, ended=True) if m.index in finished else m for m in members
    ]
    members[3] = members[3]._replace(head_generation=1, ready_since=-1.0)
    decision = experiment._scheduler.decide(_state(members))
    if expected is EndMember:
        assert isinstance(decision, EndMember) and decision.member == 3
        assert "straggler" in decision.reason
    elif expected == "exploit":
        assert isinstance(decision, CreateJob) and decision.exploited_from == "h0"
    else:
        assert isinstance(decision, CreateJob) and decision.exploited_from is None
        assert decision.member == 3 and decision.generation == 2


def test_a_retired_straggler_lets_the_experiment_finish() -> None:
    scheduler = _experiment(max_generations=6)._scheduler
    members = _members([0.9, 0.5, 0.4, 0.1])
    members = [m._replace(head_generation=5, ended=True) for m in members[:3]] + [
        members[3]._replace(head_generation=1)
    ]
    plan = scheduler.plan_claim(_state(members))
    assert [r.member for r in plan.retired] == [3]
    # What the store writes for it: ended, with the reason the decision gave.
    (written,) = [after for _, after in plan.members if after.index == 3]
    assert written.ended and written.ended_reason == plan.retired[0].reason
    assert written.ended_reason.startswith("straggler: in the bottom at generation 1")
    assert isinstance(plan.decision, Exhausted) and plan.decision.finish
