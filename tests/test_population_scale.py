"""Populations of thousands: a claim's cost does not grow with the population.

Above ``RANK_SAMPLE`` members a PBT claim reads the ready member that waited
longest (through an index) and a seeded sample of the others, never the
whole population; these tests pin what that keeps exact (which member goes,
Wait and the end of the experiment, replays under a seed, small populations
unchanged) and what it makes approximate within stated bounds (who is in
the bottom, who is copied).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import schedy
from schedy._records import MemberRecord
from schedy._scheduling import PB2Scheduler, PBTScheduler, SchedulingState
from schedy._scheduling._pbt import RANK_SAMPLE
from schedy.storage._sql._schema import SCHEMA_VERSION, _meta


def _pbt(name: str, population: int, **options: Any) -> schedy.PopulationBasedTraining:
    return schedy.PopulationBasedTraining(
        name,
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(),
        explore={"q": schedy.pbt.Perturb()},
        initial_distributions={"q": schedy.random.Uniform(0.0, 1.0)},
        population_size=population,
        seed=options.pop("seed", 7),
        **options,
    )


class _Seen:
    """What each claim's decision was shown: how many members, and the sampled size."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claims: list[tuple[int, int | None]] = []
        original = PBTScheduler.plan_claim

        def spy(scheduler: PBTScheduler, state: SchedulingState) -> Any:
            self.claims.append((len(state.members), state.size))
            return original(scheduler, state)

        monkeypatch.setattr(PBTScheduler, "plan_claim", spy)


def _oldest_ready(experiment: schedy.Experiment) -> MemberRecord:
    return min(
        (m for m in experiment.population() if m.ready), key=lambda m: (m.ready_since, m.index)
    )


def test_a_large_population_claim_reads_a_bounded_sample_and_the_oldest_ready_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    population = 3 * RANK_SAMPLE
    seen = _Seen(monkeypatch)
    with schedy.SchedyDB(f"sqlite:///{tmp_path}/big.db") as db:
        experiment = _pbt("big", population)
        db.add_experiment(experiment)
        for _ in range(population):
            with experiment.next_job() as job:
                job.results["acc"] = job.hyperparameters["q"]
        assert len(experiment.population()) == population
        for _ in range(population):
            expected = _oldest_ready(experiment)
            with experiment.next_job() as job:
                assert job.member == expected.index  # exact: the one that waited longest
                job.results["acc"] = job.hyperparameters["q"]
    sampled = [claim for claim in seen.claims if claim[1] is not None]
    assert len(sampled) >= population  # every claim once the population is large
    assert max(count for count, _ in sampled) <= RANK_SAMPLE + 1
    assert {size for _, size in seen.claims[-population:]} == {population}


def test_in_a_large_population_the_bottom_copies_the_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The truncation on a sample: judged against the whole population, no
    member above the median is exploited, members in the bottom tenth are,
    and the donors come from the top half (the bounds are far wider than the
    sampling noise of a 64-member sample; the run is seeded, so it replays);
    and about as many members are exploited as when ranking everyone."""
    population = 4 * RANK_SAMPLE
    with schedy.SchedyDB(f"sqlite:///{tmp_path}/fidelity.db") as db:
        experiment = _pbt("fidelity", population)
        db.add_experiment(experiment)
        for _ in range(population):
            with experiment.next_job() as job:
                job.results["acc"] = job.hyperparameters["q"]
        exploited_quantiles: list[float] = []
        kept_quantiles: list[float] = []
        donor_quantiles: list[float] = []
        for _ in range(population):
            members = experiment.population()
            claimed = _oldest_ready(experiment)
            # Judged as PBT judges them: members ahead at the claimed one's generation.
            at = {m.index: PBTScheduler._score_at(m, claimed.head_generation) for m in members}
            scores = sorted(s for s in at.values() if s is not None)

            def quantile(score: float | None, scores: list[float] = scores) -> float:
                return sum(s < (score or 0.0) for s in scores) / len(scores)

            with experiment.next_job() as job:
                if job.exploited_from is None:
                    kept_quantiles.append(quantile(at[claimed.index]))
                else:
                    exploited_quantiles.append(quantile(at[claimed.index]))
                    donor = experiment.get_job(job.exploited_from).member or 0
                    donor_quantiles.append(quantile(at[donor]))
                job.results["acc"] = job.hyperparameters["q"]
    assert exploited_quantiles and max(exploited_quantiles) < 0.5
    assert not [q for q in kept_quantiles if q < 0.1]
    assert min(donor_quantiles) >= 0.5
    # As often as when ranking everyone (the same run, the sample switched off).
    exact = _exploits(tmp_path / "exact.db", population, monkeypatch, sample=False)
    assert abs(len(exploited_quantiles) - exact) / population < 0.1


def _exploits(path: Path, population: int, monkeypatch: pytest.MonkeyPatch, sample: bool) -> int:
    """Exploits in the second round of claims of a seeded run."""
    if not sample:
        monkeypatch.setattr(PBTScheduler, "sample_members", lambda *args: None)
    with schedy.SchedyDB(f"sqlite:///{path}") as db:
        experiment = _pbt("rate", population)
        db.add_experiment(experiment)
        exploits = 0
        for claim in range(2 * population):
            with experiment.next_job() as job:
                job.results["acc"] = job.hyperparameters["q"]
            exploits += claim >= population and job.exploited_from is not None
    return exploits


def _run(url: str, population: int, claims: int) -> list[tuple[Any, ...]]:
    with schedy.SchedyDB(url) as db:
        experiment = _pbt("replay", population, seed=11)
        db.add_experiment(experiment)
        rng = random.Random(3)
        for _ in range(claims):
            with experiment.next_job() as job:
                job.results["acc"] = round(job.hyperparameters["q"] + rng.random() / 10, 6)
        by_id = {job.id: job for job in experiment.all_jobs()}
        return [
            (
                job.member,
                job.generation,
                job.hyperparameters["q"],
                None if job.exploited_from is None else by_id[job.exploited_from].member,
            )
            for job in by_id.values()
        ]


def test_a_seeded_large_population_replays_exactly(tmp_path: Path) -> None:
    population = RANK_SAMPLE + 16
    first = _run(f"sqlite:///{tmp_path}/one.db", population, 3 * population)
    second = _run(f"sqlite:///{tmp_path}/two.db", population, 3 * population)
    assert first == second
    assert any(exploited is not None for *_, exploited in first)


def test_a_large_population_waits_when_every_member_runs_and_ends(store_url: str) -> None:
    population = RANK_SAMPLE + 2
    with schedy.SchedyDB(store_url) as db:
        experiment = _pbt("busy", population, max_generations=2)
        db.add_experiment(experiment)
        first = [experiment.next_job() for _ in range(population)]
        with pytest.raises(schedy.errors.NoJobError, match="busy"):
            experiment.next_job(timeout=0)
        for job in first:
            with job:
                job.results["acc"] = job.hyperparameters["q"]
        with pytest.raises(schedy.errors.NoJobError, match="finished"):
            for _ in range(3 * population):  # generation 1 (or retired as stragglers)
                with experiment.next_job(timeout=0) as job:
                    assert job.generation == 1
                    job.results["acc"] = job.hyperparameters["q"]
        assert db.get_experiment("busy").status == schedy.Experiment.DONE


def test_small_populations_synchronous_pbt_and_pb2_are_read_whole() -> None:
    rng = random.Random(0)
    pbt = _pbt("x", 8)._scheduler
    assert isinstance(pbt, PBTScheduler)
    assert pbt.sample_members(RANK_SAMPLE, rng) is None
    sample = pbt.sample_members(10 * RANK_SAMPLE, rng)
    assert sample is not None and len(set(sample)) == RANK_SAMPLE
    assert _pbt("s", 8, synchronous=True)._scheduler.sample_members(10_000, rng) is None
    pb2 = PB2Scheduler(
        schedy.pbt.MAXIMIZE,
        "acc",
        bounds={"q": schedy.random.Uniform(0.0, 1.0)},
        initial_distributions={"q": schedy.random.Uniform(0.0, 1.0)},
        population_size=8,
    )
    assert pb2.sample_members(10_000, rng) is None


_SCALE_INDEXES = {
    "schedy_members": "ix_schedy_members_ready",
    "schedy_jobs": "ix_schedy_jobs_exp_status_lease",
}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_schema_3_store_gets_the_population_indexes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path}/three.db"
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    with schedy.SchedyDB(url) as db:
        db.add_experiment(_pbt("m", 4))
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for index in _SCALE_INDEXES.values():
                connection.exec_driver_sql(f"DROP INDEX {index}")
            # Schema 5's column, which schema 3 did not have either.
            connection.exec_driver_sql("ALTER TABLE schedy_members DROP COLUMN ended_reason")
            connection.execute(
                sa.update(_meta).where(_meta.c.key == "schema_version").values(value="3")
            )
        with schedy.SchedyDB(url) as db, db.get_experiment("m").next_job() as job:
            job.results["acc"] = 0.5
        inspector = sa.inspect(engine)
        for table, index in _SCALE_INDEXES.items():
            assert index in {found["name"] for found in inspector.get_indexes(table)}
        with engine.connect() as connection:
            version = connection.execute(
                sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
            ).scalar_one()
        assert int(version) == SCHEMA_VERSION == 5
    finally:
        engine.dispose()
