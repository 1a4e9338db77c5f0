"""Table-driven tests of the search kinds beyond vanilla PBT (pure decisions, no storage):
successive halving / Hyperband, PB2, synchronous PBT and the straggler rule; then two
whole one-worker runs on SQLite (what ASHA and Hyperband promote once DONE)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

import schedy
from schedy._records import JobRecord, JobStatus, MemberRecord
from schedy._scheduling import CreateJob, EndMember, Exhausted, SchedulingState, TakeQueued, Wait
from schedy._scheduling._halving import (
    HyperbandScheduler,
    SuccessiveHalvingScheduler,
    bracket_cycle,
    rung_budgets,
)

SPACE = {"x": schedy.random.Uniform(0.0, 1.0)}


# -- helpers ------------------------------------------------------------------
def _halving(**kwargs: Any) -> SuccessiveHalvingScheduler:
    options: dict[str, Any] = {"max_budget": 27, "reduction_factor": 3, "seed": 0}
    options.update(kwargs)
    return SuccessiveHalvingScheduler(schedy.pbt.MAXIMIZE, "acc", SPACE, **options)


def _member(
    index: int,
    scores: list[float | None],
    *,
    busy: bool = False,
    crashes: int = 0,
    ended: bool = False,
) -> MemberRecord:
    """A configuration that finished one job per rung with ``scores`` (rung 0 first)."""
    if not scores:
        return MemberRecord(index, busy_id=f"b{index}" if busy else None, last_id=f"l{index}")
    history = json.dumps([[g, s] for g, s in enumerate(scores)])
    return MemberRecord(
        index,
        head_id=f"h{index}",
        head_generation=len(scores) - 1,
        score=scores[-1],
        busy_id=f"b{index}" if busy else None,
        last_id=f"h{index}",
        crashes=crashes,
        ended=ended,
        ready_since=float(index),
        history=history,
    )


def _state(members: list[MemberRecord], queued: JobRecord | None = None) -> SchedulingState:
    def load_job(job_id: str) -> JobRecord:
        index = int(job_id[1:])
        member = next(m for m in members if m.index == index)
        return JobRecord(
            id=job_id,
            experiment="e",
            status=JobStatus.DONE if job_id.startswith("h") else JobStatus.CRASHED,
            hyperparameters={"x": index / 100},
            results={"acc": member.score, "model_path": f"ckpt/{job_id}"},
            member=index,
            generation=member.head_generation,
            parent_id=None,
        )

    return SchedulingState(
        queued=queued, members=members, load_job=load_job, rng=random.Random(0), new_job_id="new"
    )


# -- successive halving: rungs ---------------------------------------------------
@pytest.mark.parametrize(
    ("low", "high", "eta", "budgets"),
    [
        (1, 27, 3, [1, 3, 9, 27]),
        (1, 81, 3, [1, 3, 9, 27, 81]),
        (1, 10, 3, [1, 3, 10]),  # the top rung is max_budget itself
        (2, 16, 2, [2, 4, 8, 16]),
        (5, 5, 3, [5]),
        (0.5, 4.5, 3, [0.5, 1.5, 4.5]),
    ],
)
def test_rung_budgets(low: float, high: float, eta: int, budgets: list[float]) -> None:
    assert rung_budgets(low, high, eta) == pytest.approx(budgets)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_budget": None}, "max_budget is required"),
        ({"max_budget": 0}, "max_budget must be"),
        ({"min_budget": 10, "max_budget": 5}, ">= min_budget"),
        ({"reduction_factor": 1}, "reduction_factor"),
        ({"max_configurations": 0}, "max_configurations"),
    ],
)
def test_invalid_halving_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _halving(**kwargs)


def test_the_configuration_round_trips() -> None:
    scheduler = _halving(max_configurations=50, min_budget=1)
    again = SuccessiveHalvingScheduler.from_config(json.loads(json.dumps(scheduler.to_config())))
    assert again.to_config() == scheduler.to_config()
    hyperband = HyperbandScheduler(
        schedy.pbt.MINIMIZE, "loss", SPACE, max_budget=81, brackets=3, seed=1
    )
    again_hb = HyperbandScheduler.from_config(json.loads(json.dumps(hyperband.to_config())))
    assert again_hb.to_config() == hyperband.to_config() and again_hb.brackets == 3


# -- successive halving: the decision ----------------------------------------------
def test_starts_new_configurations_when_nothing_is_promotable() -> None:
    # Two configurations at rung 0: floor(2 / 3) = 0 promotable -> a new one.
    decision = _halving().decide(_state([_member(0, [0.5]), _member(1, [0.9])]))
    assert isinstance(decision, CreateJob)
    assert decision.member == 2 and decision.generation == 0 and decision.parent_id is None
    assert 0.0 <= decision.hyperparameters["x"] < 1.0


def test_promotes_the_best_of_the_top_third_as_a_continuation() -> None:
    members = [_member(i, [s]) for i, s in enumerate([0.5, 0.9, 0.1])]
    decision = _halving().decide(_state(members))
    assert isinstance(decision, CreateJob)
    assert decision.member == 1 and decision.generation == 1
    assert decision.parent_id == "h1" and decision.exploited_from is None
    assert decision.results["model_path"] == "ckpt/h1"  # the checkpoint follows


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        # The rung-0 winner is already running rung 1: the next is not in the top third.
        ([_member(0, [0.5]), _member(1, [0.9], busy=True), _member(2, [0.1])], ("new", 3)),
        # Six at rung 0: the top two are promoted in order, the best first.
        ([_member(i, [s]) for i, s in enumerate([0.1, 0.6, 0.2, 0.8, 0.3, 0.4])], (3, 1)),
        (
            [_member(3, [0.8, 0.5], busy=False)]
            + [_member(i, [s]) for i, s in enumerate([0.1, 0.6, 0.2])]
            + [_member(i, [s]) for i, s in [(4, 0.3), (5, 0.4)]],
            (1, 1),  # member 3 promoted already (head at rung 1): next best of rung 0
        ),
        # Higher rungs first: rung 1 has 3 configurations, its best is promoted to rung 2.
        (
            [_member(i, [0.9, s]) for i, s in enumerate([0.2, 0.7, 0.4])]
            + [_member(i, [s]) for i, s in [(3, 0.95), (4, 0.1), (5, 0.1)]]
            + [_member(i, [s]) for i, s in [(6, 0.1), (7, 0.1), (8, 0.1)]],
            (1, 2),
        ),
        # A member promoted beyond its history's reach counts as a top one.
        (
            [_member(0, [0.9, 0.9]), _member(1, [0.5]), _member(2, [0.4])],
            ("new", 3),
        ),
        # NaN/missing scores rank worst.
        ([_member(0, [None]), _member(1, [0.2]), _member(2, [None])], (1, 1)),
    ],
    ids=["winner-busy", "best-first", "next-best", "highest-rung", "promoted", "nan-worst"],
)
def test_rung_promotion_order(members: list[MemberRecord], expected: tuple[Any, int]) -> None:
    decision = _halving().decide(_state(members))
    assert isinstance(decision, CreateJob)
    who, generation = expected
    if who == "new":
        assert decision.parent_id is None and decision.member == generation
    else:
        assert (decision.member, decision.generation) == (who, generation)


def test_a_configuration_ends_at_the_top_rung() -> None:
    scheduler = _halving()
    member = _member(0, [0.1, 0.2, 0.3], busy=True)
    job = JobRecord("b0", "e", JobStatus.RUNNING, {}, {}, member=0, generation=3)
    after = scheduler.job_ended(member, job, JobStatus.DONE, {"acc": 0.5}, 1.0)
    assert after.ended and after.head_generation == 3 and after.score == 0.5
    job2 = JobRecord("b0", "e", JobStatus.RUNNING, {}, {}, member=0, generation=2)
    assert not scheduler.job_ended(member, job2, JobStatus.DONE, {"acc": 0.5}, 1.0).ended


def test_a_crashed_job_is_retried_then_its_configuration_retired() -> None:
    scheduler = _halving(max_member_crashes=2)
    crashed = _member(0, [0.5], crashes=1)._replace(last_id="l0")
    state = _state([crashed, _member(1, [0.9]), _member(2, [0.1])])
    state.load_job = lambda job_id: JobRecord(
        job_id,
        "e",
        JobStatus.CRASHED,
        {"x": 0.3},
        {"epoch": 3},
        member=0,
        generation=1,
        parent_id="h0",
    )
    state.start_results = lambda job: {"model_path": "ckpt/h0"}
    decision = scheduler.decide(state)
    assert isinstance(decision, CreateJob)
    assert (decision.member, decision.generation, decision.parent_id) == (0, 1, "h0")
    assert decision.results == {"model_path": "ckpt/h0"}
    state.members[0] = crashed._replace(crashes=2)
    retired = scheduler.decide(state)
    assert isinstance(retired, EndMember)
    assert retired.reason == "its job crashed 2 times in a row (max_member_crashes=2)"


def test_queued_jobs_become_configurations_and_the_budget_of_configurations_ends_it() -> None:
    queued = JobRecord("q", "e", JobStatus.QUEUED, {"x": 0.5}, {})
    scheduler = _halving(max_configurations=3)
    decision = scheduler.decide(_state([_member(0, [0.1])], queued=queued))
    assert isinstance(decision, TakeQueued) and decision.member == 1
    members = [_member(0, [0.1]), _member(1, [0.2], busy=True), _member(2, [])]
    members[2] = members[2]._replace(busy_id="b2")
    assert isinstance(scheduler.decide(_state(members)), Wait)
    done = [_member(0, [0.1]), _member(1, [0.2]), _member(2, [0.3, 0.4], busy=False)]
    done[2] = done[2]._replace(ended=True)
    decision = scheduler.decide(_state(done))
    assert isinstance(decision, Exhausted) and decision.finish


def test_budget_is_the_rungs_total_resource() -> None:
    scheduler = _halving()
    assert [scheduler.budget(0, g) for g in range(4)] == [1, 3, 9, 27]
    assert scheduler.budget(None, None) is None


# -- Hyperband -------------------------------------------------------------------
def test_hyperband_brackets_follow_hyperbands_allocation() -> None:
    cycle = bracket_cycle(4, 4, 3)  # eta=3, rungs 1, 3, 9, 27
    # n_s = ceil(4 / (s + 1) * 3**s): 27, 12, 6, 4 configurations per 49.
    assert [cycle.count(b) for b in range(4)] == [27, 12, 6, 4]
    assert set(cycle[:8]) == {0, 1, 2, 3}  # interleaved: a small run samples each bracket
    scheduler = HyperbandScheduler(schedy.pbt.MAXIMIZE, "acc", SPACE, max_budget=27, seed=0)
    assert scheduler.brackets == 4
    assert [scheduler.bracket(i) for i in range(len(cycle))] == cycle
    assert scheduler.bracket(len(cycle) + 3) == cycle[3]  # deterministic, repeating


@pytest.mark.parametrize(
    ("member", "generations", "budgets"),
    [(0, 4, [1, 3, 9, 27]), (1, 3, [3, 9, 27]), (3, 2, [9, 27]), (5, 1, [27])],
)
def test_hyperband_bracket_budgets(member: int, generations: int, budgets: list[int]) -> None:
    scheduler = HyperbandScheduler(schedy.pbt.MAXIMIZE, "acc", SPACE, max_budget=27, seed=0)
    assert [scheduler.budget(member, g) for g in range(generations)] == budgets
    bracket = scheduler.bracket(member)
    assert scheduler._is_final(member, generations - 1) and bracket == 4 - generations


def test_hyperband_promotes_within_a_bracket() -> None:
    scheduler = HyperbandScheduler(
        schedy.pbt.MAXIMIZE, "acc", SPACE, max_budget=27, brackets=2, seed=0
    )
    by_bracket: dict[int, list[int]] = {0: [], 1: []}
    for index in range(12):
        by_bracket[scheduler.bracket(index)].append(index)
    # Three configurations of bracket 1 (start at rung 1) and two of bracket 0.
    b1 = by_bracket[1][:3]
    b0 = by_bracket[0][:2]
    members = [_member(i, [0.1 * (k + 1)]) for k, i in enumerate(b1)]
    members += [_member(i, [0.99]) for i in b0]
    decision = scheduler.decide(_state(sorted(members, key=lambda m: m.index)))
    assert isinstance(decision, CreateJob)
    # Bracket 1's rung 1 (its generation 0) ranks only its own members.
    assert decision.member == b1[2] and decision.generation == 1
    assert scheduler.budget(decision.member, decision.generation) == 9


def test_hyperband_brackets_are_bounded() -> None:
    with pytest.raises(ValueError, match="at most the number of rungs"):
        HyperbandScheduler(schedy.pbt.MAXIMIZE, "acc", SPACE, max_budget=9, brackets=4)


def test_public_classes_front_the_schedulers() -> None:
    sh = schedy.SuccessiveHalving("sh", schedy.pbt.MAXIMIZE, "acc", SPACE, max_budget=9)
    assert sh.budgets == [1, 3, 9] and sh._KIND == "successive_halving"
    sh.reduction_factor = 2
    assert sh.budgets == [1, 2, 4, 9]
    hb = schedy.Hyperband("hb", schedy.pbt.MAXIMIZE, "acc", SPACE, max_budget=9, brackets=2)
    assert hb._KIND == "hyperband" and hb.brackets == 2
    with pytest.raises(ValueError, match="max_budget"):
        schedy.SuccessiveHalving("sh", schedy.pbt.MAXIMIZE, "acc", SPACE)


# -- PB2 ---------------------------------------------------------------------------
from schedy._scheduling._pb2 import PB2Scheduler  # noqa: E402

PB2_BOUNDS: dict[str, Any] = {
    "lr": schedy.random.LogUniform(1e-4, 1e-1),
    "width": (16, 256),
    "m": (0.0, 1.0),
    "opt": schedy.random.Choice(["sgd", "adam"]),
}


def _pb2(**kwargs: Any) -> PB2Scheduler:
    options: dict[str, Any] = {"population_size": 8, "seed": 0}
    options.update(kwargs)
    bounds = options.pop("bounds", PB2_BOUNDS)
    return PB2Scheduler(schedy.pbt.MAXIMIZE, "acc", bounds, **options)


def _pb2_state(
    points: list[dict[str, Any]],
    improvements: list[float],
    busy: set[int] = frozenset(),  # type: ignore[assignment]
    seed: int = 0,
) -> SchedulingState:
    """Members at generation 5 that trained ``points[i]`` and improved by
    ``improvements[i]`` in each of their last generations; ``busy`` ones run it again."""
    members, jobs = [], {}
    for i, (point, gain) in enumerate(zip(points, improvements)):
        history = json.dumps([[g, gain * g] for g in range(6)])
        members.append(
            MemberRecord(
                i,
                head_id=f"h{i}",
                head_generation=5,
                score=gain * 5,
                busy_id=f"b{i}" if i in busy else None,
                last_id=f"b{i}" if i in busy else f"h{i}",
                ready_since=float(i),
                history=history,
            )
        )
        jobs[f"h{i}"] = JobRecord(
            f"h{i}",
            "e",
            JobStatus.DONE,
            dict(point),
            {"acc": gain * 5},
            member=i,
            generation=5,
            parent_id=f"p{i}",
        )
        jobs[f"b{i}"] = JobRecord(
            f"b{i}",
            "e",
            JobStatus.RUNNING,
            dict(point),
            {},
            member=i,
            generation=6,
            parent_id=f"h{i}",
        )
    return SchedulingState(None, members, jobs.__getitem__, random.Random(seed))


def _point(lr: float, width: int = 64, m: float = 0.5) -> dict[str, Any]:
    return {"lr": lr, "width": width, "m": m, "opt": "sgd"}


def test_pb2_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="bounds must be a non-empty dict"):
        _pb2(bounds={})
    with pytest.raises(ValueError, match=r"bounds\['lr'\]"):
        _pb2(bounds={"lr": schedy.random.Normal(0, 1)})
    with pytest.raises(ValueError, match="takes no explore strategy"):
        _pb2(explore={"m": schedy.pbt.Perturb()})
    scheduler = _pb2()
    assert isinstance(scheduler.bounds["width"], schedy.random.IntUniform)
    assert isinstance(scheduler.explore["opt"], schedy.pbt.Resample)  # categorical: as PBT
    assert scheduler.initial_distributions == scheduler.bounds
    again = PB2Scheduler.from_config(json.loads(json.dumps(scheduler.to_config())))
    assert again.to_config() == scheduler.to_config()


@pytest.mark.parametrize("seed", range(6))
def test_pb2_acquisition_stays_within_bounds(seed: int) -> None:
    rng = random.Random(seed)
    points = [
        _point(10 ** rng.uniform(-4, -1), rng.randint(16, 256), rng.random()) for _ in range(8)
    ]
    state = _pb2_state(points, [rng.gauss(0, 1) for _ in range(8)], busy={2, 3}, seed=seed)
    scheduler = _pb2()
    chosen = scheduler.explored(points[0], state, state.members[7], 6)
    assert 1e-4 <= chosen["lr"] <= 1e-1
    assert isinstance(chosen["width"], int) and 16 <= chosen["width"] <= 256
    assert 0.0 <= chosen["m"] <= 1.0
    assert chosen["opt"] in ("sgd", "adam")


def test_pb2_goes_where_improvements_were_largest() -> None:
    # Improvement peaks at lr = 1e-2: the acquisition picks near it.
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 5e-2]
    import math

    gains = [1.0 - abs(math.log10(lr) + 2) / 2 for lr in lrs]
    state = _pb2_state([_point(lr) for lr in lrs], gains)
    chosen = _pb2(bounds={"lr": PB2_BOUNDS["lr"]}).explored(
        {"lr": 1e-4}, state, state.members[0], 6
    )
    assert 2e-3 < chosen["lr"] < 5e-2


def test_pb2_does_not_pick_a_point_a_running_member_trains() -> None:
    """Two concurrent explores: the second sees the first's point running and goes elsewhere."""
    import math

    bounds = {"m": (0.0, 1.0)}
    ms = [0.1, 0.3, 0.5, 0.7, 0.9, 0.2]
    gains = [0.5] * len(ms)  # a flat landscape: the acquisition follows the uncertainty
    points = [{"m": m} for m in ms]
    first = _pb2(bounds=bounds).explored({"m": 0.5}, _pb2_state(points, gains), _member(0, [1]), 6)
    # The first explore's job now runs on member 5 (at generation 6, its point).
    points[5] = dict(first)
    state = _pb2_state(points, gains, busy={5})
    second = _pb2(bounds=bounds).explored({"m": 0.5}, state, state.members[0], 6)
    assert abs(second["m"] - first["m"]) > 0.1
    # Without the running member, the same draws would choose the same point again.
    idle = _pb2_state([*points[:5], {"m": 0.2}], gains)
    again = _pb2(bounds=bounds).explored({"m": 0.5}, idle, idle.members[0], 6)
    assert math.isclose(again["m"], first["m"])


def test_pb2_is_deterministic_under_a_seed() -> None:
    rng = random.Random(3)
    points = [
        _point(10 ** rng.uniform(-4, -1), rng.randint(16, 256), rng.random()) for _ in range(8)
    ]
    gains = [rng.random() for _ in range(8)]
    picks = [
        _pb2().explored(points[0], _pb2_state(points, gains, seed=7), _member(0, [1]), 6)
        for _ in range(2)
    ]
    assert picks[0] == picks[1]


def test_pb2_without_data_draws_in_the_bounds() -> None:
    state = SchedulingState(None, [_member(0, [0.5])], lambda job_id: None, random.Random(0))  # type: ignore[arg-type,return-value]
    state.members = []
    chosen = _pb2(bounds={"m": (0.0, 1.0)}).acquire([], [], 1, state)
    assert 0.0 <= chosen["m"] <= 1.0


def test_pb2_exploits_as_pbt_and_explores_by_the_gp() -> None:
    rng = random.Random(1)
    points = [_point(10 ** rng.uniform(-4, -1)) for _ in range(8)]
    gains = [float(i) for i in range(8)]
    state = _pb2_state(points, gains)
    state.members = [m._replace(ready_since=-1.0 if m.index == 0 else 1.0) for m in state.members]
    decision = _pb2(exploit=schedy.pbt.Truncate(0.25)).decide(state)
    assert isinstance(decision, CreateJob)
    assert decision.member == 0 and decision.exploited_from in ("h6", "h7")
    assert decision.generation == 6 and decision.source_member in (6, 7)


# -- the callbacks follow job.budget --------------------------------------------------
def test_callbacks_train_to_the_jobs_budget() -> None:
    from types import SimpleNamespace

    from schedy.integrations import _core

    assert _core.job_budget(SimpleNamespace(budget=9)) == 9
    assert _core.job_budget(SimpleNamespace(budget=None)) is None
    assert _core.job_budget(SimpleNamespace()) is None  # a job of another kind
    callback = _core.JobCallback()
    job = SimpleNamespace(id="j", hyperparameters={}, results={}, put=lambda: None, budget=9)
    callback._take_job(job, "acc", 1, None, None, None, ".ckpt")  # type: ignore[arg-type]
    callback.start_epoch = 3  # a promotion resumed at lineage epoch 3 (rung 1's budget)
    assert callback.budget_decision(4) == (False, None)  # epochs_per_job=1 is not followed
    stop, reason = callback.budget_decision(9)
    assert stop and reason is not None and "job.budget 9" in reason


# -- whole runs: what ASHA and Hyperband promote ----------------------------------
def _run_to_done(tmp_path: Any, experiment: schedy.Experiment) -> list[schedy.Job]:
    """One worker (seeded scores, no training) until the experiment is DONE."""
    from schedy.errors import NoJobError

    rng = random.Random(0)
    with schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db") as db:
        db.add_experiment(experiment)
        stored = db.get_experiment(experiment.name)
        while True:
            try:
                job = stored.next_job(timeout=0)
            except NoJobError:
                break
            with job:
                job.results = {"acc": rng.random(), "epoch": job.budget}
        assert db.get_experiment(experiment.name).status == schedy.Experiment.DONE
        return list(stored.all_jobs())


def _top_promoted(jobs: list[schedy.Job], rungs: int, bracket_of: Any) -> list[list[int]]:
    """Per bracket, per rung: how many configurations trained it; and checks that
    the top ``floor(n / 3)`` of every rung (final ranking) went on to the next."""
    counts: dict[int, list[int]] = {}
    for job in jobs:
        row = counts.setdefault(bracket_of(job.member), [0] * rungs)
        row[job.generation or 0] += 1
    for bracket in counts:
        for generation in range(rungs - 1 - bracket):
            here = [
                j for j in jobs if bracket_of(j.member) == bracket and j.generation == generation
            ]
            above = {j.member for j in jobs if j.generation == generation + 1}
            ranked = sorted(here, key=lambda j: -j.results["acc"])
            assert {j.member for j in ranked[: len(here) // 3]} <= above, (bracket, generation)
    return [counts[b] for b in sorted(counts)]


def test_one_worker_asha_promotes_every_rungs_top_third(tmp_path: Any) -> None:
    # Once DONE, the top floor(n / eta) of every rung were promoted, as in
    # synchronous halving (nothing promotable is left). Asynchronous promotion
    # also promoted a few that looked top early and fell behind later (Li et
    # al. 2020's mispromotions): 10 and 4 where synchronous halving has 9 and 3.
    experiment = schedy.SuccessiveHalving(
        "sh", schedy.pbt.MAXIMIZE, "acc", SPACE, 1, 27, 3, max_configurations=81, seed=0
    )
    jobs = _run_to_done(tmp_path, experiment)
    assert _top_promoted(jobs, 4, lambda member: 0) == [[81, 27, 10, 4]]


def test_one_worker_hyperband_runs_hyperbands_brackets(tmp_path: Any) -> None:
    # One cycle of 49 configurations: brackets of 27, 12, 6 and 4 (Hyperband's
    # n_s for R = 27, eta = 3), bracket b starting at rung b (generation 0 is
    # rung b), each bracket's top third promoted within it.
    experiment = schedy.Hyperband(
        "hb", schedy.pbt.MAXIMIZE, "acc", SPACE, 1, 27, 3, max_configurations=49, seed=0
    )
    scheduler = HyperbandScheduler(schedy.pbt.MAXIMIZE, "acc", SPACE, max_budget=27, seed=0)
    jobs = _run_to_done(tmp_path, experiment)
    counts = _top_promoted(jobs, 4, scheduler.bracket)
    # Bracket 0 as synchronous halving; bracket 1 mispromoted one at each rung.
    assert counts == [[27, 9, 3, 1], [12, 5, 2, 0], [6, 2, 0, 0], [4, 0, 0, 0]]
