"""Stores written by an older schedy open, and are migrated, without losing anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

import schedy
from schedy.storage._sql._schema import SCHEMA_VERSION, _meta

#: Written by schedy 0.1 (schema 1, commit 418138b): a PBT experiment "toy"
#: (population 2, max_generations 4) after four finished jobs and one left
#: RUNNING by a killed worker, and a manual experiment "queue" with one job.
SCHEMA_1 = Path(__file__).parent / "data" / "schema1.db"


#: schedy_meta, for the tests' own reads and writes (``key`` needs quoting on MariaDB).
_META = _meta


def _version(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        value = connection.execute(
            sa.select(_META.c.value).where(_META.c.key == "schema_version")
        ).scalar_one()
    engine.dispose()
    return int(value)


def _set_version(connection: sa.Connection, version: int) -> None:
    connection.execute(
        sa.update(_META).where(_META.c.key == "schema_version").values(value=str(version))
    )


def test_a_schema_1_sqlite_store_is_migrated_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(SCHEMA_1, path)
    url = f"sqlite:///{path}"
    assert _version(url) == 1
    with schedy.SchedyDB(url, lease_seconds=0.05) as db:
        assert _version(url) == SCHEMA_VERSION
        assert [e.name for e in db.get_experiments()] == ["toy", "queue"]
        toy = db.get_experiment("toy")
        jobs = list(toy.all_jobs())
        assert [(job.member, job.generation, job.status) for job in jobs] == [
            (0, 0, "DONE"),
            (1, 0, "DONE"),
            (0, 1, "DONE"),
            (1, 2, "DONE"),
            (0, 2, "RUNNING"),
        ]
        assert jobs[0].results["model_path"] == f"ckpt/{jobs[0].id}.pt"
        assert [m.ended_reason for m in toy.population()] == [None, None]
        # The population goes on: the RUNNING job's lease has long expired, so
        # member 0 is ready again, and both members continue their lineages.
        claimed = []
        while True:
            try:
                job = toy.next_job(timeout=0)
            except schedy.errors.NoJobError:
                break
            with job:
                job.results["acc"] = 1.0
            claimed.append((job.member, job.generation))
        assert toy.get_job(jobs[4].id).status == schedy.Job.CRASHED
        assert sorted(claimed) == [(0, 2), (0, 3), (1, 3)]
        assert db.get_experiment("toy").status == schedy.Experiment.DONE
        queue = db.get_experiment("queue")
        with queue.next_job() as job:
            assert job.results == {"note": "queued"}
    # Opening it again finds the current schema: nothing to migrate twice.
    with schedy.SchedyDB(url) as db:
        assert len(list(db.get_experiment("toy").all_jobs())) == 8


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/schedy.db"
    return str(
        request.getfixturevalue("postgres_url" if request.param == "postgresql" else "mariadb_url")
    )


def test_a_schema_1_store_is_migrated_on_every_database(sql_url: str) -> None:
    with schedy.SchedyDB(sql_url) as db:
        experiment = schedy.ManualSearch("m")
        db.add_experiment(experiment)
        experiment.add_job(hyperparameters={"x": 1}, results={"r": 2})
    # Turn it into what schema 1 was: no start_results, claim_key, tokens; version 1.
    engine = sa.create_engine(sql_url)
    with engine.begin() as connection:
        for index in ("ix_schedy_jobs_exp_claim_key", "ix_schedy_jobs_exp_parent"):
            on = " ON schedy_jobs" if connection.dialect.name in ("mysql", "mariadb") else ""
            connection.exec_driver_sql(f"DROP INDEX {index}{on}")
        connection.exec_driver_sql("ALTER TABLE schedy_jobs DROP COLUMN start_results")
        connection.exec_driver_sql("ALTER TABLE schedy_jobs DROP COLUMN claim_key")
        connection.exec_driver_sql("DROP TABLE schedy_tokens")
        connection.exec_driver_sql("ALTER TABLE schedy_members DROP COLUMN ended_reason")
        _set_version(connection, 1)
    engine.dispose()
    with schedy.SchedyDB(sql_url) as db:
        assert _version(sql_url) == SCHEMA_VERSION
        experiment = db.get_experiment("m")
        with experiment.next_job() as job:
            assert job.hyperparameters == {"x": 1} and job.results == {"r": 2}
        experiment.add_job(hyperparameters={"x": 2}, results={"r": 3})
        assert [job.results for job in experiment.all_jobs()] == [{"r": 2}, {"r": 3}]


def _pruned_pbt_member(experiment: schedy.Experiment) -> schedy.Job:
    job = experiment.next_job(timeout=0)
    job.status = schedy.Job.PRUNED
    job.put()
    return job


def test_a_schema_4_store_gains_ended_reasons(sql_url: str) -> None:
    with schedy.SchedyDB(sql_url) as db:
        experiment = schedy.PopulationBasedTraining(
            "p",
            schedy.pbt.MAXIMIZE,
            "acc",
            schedy.pbt.Truncate(),
            initial_distributions={"lr": schedy.random.Uniform(0, 1)},
            population_size=2,
            seed=1,
        )
        db.add_experiment(experiment)
        _pruned_pbt_member(experiment)
    # Turn it into schema 4: members without ended_reason.
    engine = sa.create_engine(sql_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE schedy_members DROP COLUMN ended_reason")
        _set_version(connection, 4)
    engine.dispose()
    with schedy.SchedyDB(sql_url) as db:
        assert _version(sql_url) == SCHEMA_VERSION
        experiment = db.get_experiment("p")
        # A member that ended before schedy recorded why: ended, reason unknown.
        (old,) = experiment.population()
        assert old.ended and old.ended_reason is None
        pruned = _pruned_pbt_member(experiment)
        reasons = [member.ended_reason for member in experiment.population()]
        assert reasons == [None, f"its job {pruned.id} was pruned"]


def test_a_newer_schema_is_refused_and_left_as_is(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    shutil.copy(SCHEMA_1, path)
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        _set_version(connection, SCHEMA_VERSION + 1)
    engine.dispose()
    with pytest.raises(schedy.errors.SchemaVersionError, match="newer schedy"):
        schedy.SchedyDB(url)
    assert _version(url) == SCHEMA_VERSION + 1
