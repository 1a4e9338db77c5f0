"""What only a database server does: connections that die under a running worker,
and a lease clock that is the server's.

A database restart, a proxy's or the server's idle timeout, or an
administrator's ``pg_terminate_backend`` / ``KILL`` closes the connections a
worker keeps in its pool. Nothing was being written on them, so the next
call must just work on a fresh connection -- no ping before every
transaction, no error shown -- and nothing already stored may be lost. Each
test runs on PostgreSQL and MariaDB where it applies.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import schedy
from schedy.errors import StorageError


def _drop_connections(admin: sa.Engine, url: str) -> int:
    """Terminate every connection to the database of ``url``; return how many."""
    name = sa.engine.make_url(url).database
    with admin.connect() as connection:
        if admin.dialect.name == "postgresql":
            return len(
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %(name)s AND pid <> pg_backend_pid()",
                    {"name": name},
                ).all()
            )
        ids = (
            connection.exec_driver_sql(
                "SELECT id FROM information_schema.processlist WHERE db = %(name)s "
                "AND id <> CONNECTION_ID()",
                {"name": name},
            )
            .scalars()
            .all()
        )
        for connection_id in ids:
            connection.exec_driver_sql(f"KILL {int(connection_id)}")
        return len(ids)


@pytest.fixture(params=["postgresql", "mariadb"])
def server_db(request: pytest.FixtureRequest) -> tuple[str, sa.Engine]:
    """``(store URL, admin engine)`` of a fresh store on each database server (or skip)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        return url, request.getfixturevalue("postgres_admin")
    url = request.getfixturevalue("mariadb_url")
    return url, request.getfixturevalue("mariadb_admin")


def _pbt() -> schedy.PopulationBasedTraining:
    return schedy.PopulationBasedTraining(
        "pbt",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.25),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(1e-4, 1e-1)},
        population_size=2,
        seed=3,
    )


def test_dropped_connections_are_replaced_without_an_error(
    server_db: tuple[str, sa.Engine],
) -> None:
    url, admin = server_db
    with schedy.SchedyDB(url) as db:
        db.add_experiment(_pbt())
        experiment = db.get_experiment("pbt")
        finished = []
        for step in range(6):
            # The pool holds at least one connection: kill them all.
            assert _drop_connections(admin, url) >= 1
            with experiment.next_job() as job:  # claim: the hot path's raw connection
                job.results["acc"] = 0.1 * step
                job.put()  # an update in the middle of the job
            finished.append(job.id)
            _drop_connections(admin, url)
            assert db.get_experiment("pbt").get_job(job.id).status == schedy.Job.DONE
        # Every claim and finish landed once: six DONE jobs, in one lineage per member.
        jobs = {job.id: job for job in experiment.all_jobs()}
        assert sorted(jobs) == sorted(finished)
        assert all(job.status == schedy.Job.DONE for job in jobs.values())
        assert {job.generation for job in jobs.values()} == {0, 1, 2}


def test_a_database_that_stays_down_is_a_clear_error(
    postgres_url: str, postgres_admin: sa.Engine
) -> None:
    database = sa.engine.make_url(postgres_url).database
    with schedy.SchedyDB(postgres_url) as db:
        db.add_experiment(_pbt())
        experiment = db.get_experiment("pbt")
        # The server answers, but refuses every new connection to this database.
        with postgres_admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            _drop_connections(postgres_admin, postgres_url)
            with pytest.raises(StorageError) as caught:
                experiment.next_job()
            assert "Check that the database is running" in str(caught.value)
            assert "nothing was written" in str(caught.value)
        finally:
            with postgres_admin.connect() as connection:
                connection.exec_driver_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        with experiment.next_job() as job:  # and it works again once the database is back
            job.results["acc"] = 1.0
        assert experiment.get_job(job.id).status == schedy.Job.DONE


#: (statement showing that some transaction waits for a lock, the server's clock now)
_LOCK_WAIT = {
    "postgresql": (
        "SELECT count(*) FROM pg_locks WHERE NOT granted",
        "SELECT extract(epoch from clock_timestamp())",
    ),
    "mysql": (
        "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'",
        "SELECT UNIX_TIMESTAMP(SYSDATE(6))",
    ),
}


def test_a_claim_that_waited_for_the_lock_is_stamped_after_the_wait(
    server_db: tuple[str, sa.Engine],
) -> None:
    # Lease and lineage times come from the server's clock. A claim that
    # queued behind another transaction must read the clock once it holds
    # the lock, or a job would look created before its parent finished.
    import threading
    import time

    url, admin = server_db
    waiting, clock = _LOCK_WAIT["postgresql" if admin.dialect.name == "postgresql" else "mysql"]
    with schedy.SchedyDB(url) as db:
        db.add_experiment(_pbt())
        experiment = db.get_experiment("pbt")
        engine = sa.create_engine(url)
        claimed: list[schedy.Job] = []
        try:
            with engine.connect() as holder:
                if engine.dialect.name != "postgresql":
                    holder.exec_driver_sql("SET time_zone = '+00:00'")
                    holder.commit()
                transaction = holder.begin()
                holder.exec_driver_sql(
                    "SELECT id FROM schedy_experiments WHERE name = 'pbt' FOR UPDATE"
                )
                claimer = threading.Thread(target=lambda: claimed.append(experiment.next_job()))
                claimer.start()
                deadline = time.monotonic() + 30
                with admin.connect() as watch:  # wait until the claim is queued
                    while not watch.exec_driver_sql(waiting).scalar():
                        assert time.monotonic() < deadline, "the claim never waited"
                        time.sleep(0.01)
                time.sleep(0.05)  # a clock read before the wait would now be 50 ms behind
                released = holder.exec_driver_sql(clock).scalar()
                transaction.commit()
                claimer.join(timeout=30)
        finally:
            engine.dispose()
        (job,) = claimed
        assert job.created_at >= float(released)
        job.results["acc"] = 1.0
        job.put()


def test_a_table_changed_by_hand_is_said_so_not_blamed_on_the_connection(
    server_db: tuple[str, sa.Engine],
) -> None:
    # The database answers; what it refuses is schedy's statement. Saying
    # "check that the database is running" would send the user the wrong way.
    url, _ = server_db
    with schedy.SchedyDB(url) as db:
        db.add_experiment(_pbt())
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE schedy_members")
        engine.dispose()
        with pytest.raises(StorageError) as caught:
            db.get_experiment("pbt").population()
    message = str(caught.value)
    assert "Check that the database is running" not in message
    assert "schedy_members" in message
    assert "tables" in message and "nothing was written" in message


def test_a_missing_permission_is_said_so(postgres_url: str, postgres_admin: sa.Engine) -> None:
    url = sa.engine.make_url(postgres_url)
    with schedy.SchedyDB(postgres_url) as db:
        db.add_experiment(_pbt())
    with postgres_admin.connect() as connection:
        connection.exec_driver_sql("DROP ROLE IF EXISTS schedy_reader")
        connection.exec_driver_sql("CREATE ROLE schedy_reader LOGIN")
    try:
        reader = url.set(username="schedy_reader").render_as_string(False)
        with pytest.raises(StorageError) as caught, schedy.SchedyDB(reader) as db:
            db.get_experiments()
        message = str(caught.value)
        assert "Check that the database is running" not in message
        assert "permission" in message and "schedy_reader" in message
        assert "GRANT" in message
    finally:
        with postgres_admin.connect() as connection:
            connection.exec_driver_sql(
                f'REVOKE ALL ON DATABASE "{url.database}" FROM schedy_reader'
            )
            connection.exec_driver_sql("DROP OWNED BY schedy_reader")
            connection.exec_driver_sql("DROP ROLE schedy_reader")
