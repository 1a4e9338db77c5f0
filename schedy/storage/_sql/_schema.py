"""The SQL schema, its version and the migrations between versions (SQLAlchemy Core).

Every store records its schema version in ``schedy_meta``. Opening a store
creates the tables when there are none, runs the migrations from its
version up to :data:`SCHEMA_VERSION` in one transaction, and refuses a store
written by a newer schedy (:class:`~schedy.errors.SchemaVersionError`).

History:

1. experiments, jobs, members (schedy 0.1).
2. ``schedy_jobs.start_results``: the results a hand-added job was queued
   with, so that a crashed first job of a member is retried from them
   rather than from what the crashed attempt wrote (NULL: the parent's
   results, or none).
3. ``schedy_jobs.claim_key``: the request id of the claim that created the
   job, so a claim retried after its answer was lost returns the same job;
   an index on ``(experiment_id, parent_id)`` to find a job's children; the
   ``schedy_tokens`` table (server tokens, hashed, with their roles).
4. Indexes for populations of thousands and fleets of workers:
   ``ix_schedy_members_ready`` on ``(experiment_id, ended, busy_id,
   ready_since, idx)``, so a claim finds the ready member that waited
   longest with one index probe instead of reading the population, and
   ``ix_schedy_jobs_exp_status_lease`` on ``(experiment_id, status,
   lease_expires_at)``, so a claim finds the expired leases among
   thousands of running jobs by a range, not by reading them all.
5. ``schedy_members.ended_reason``: why a member was ended before its
   schedule's normal end (a straggler, kept crashing, pruned), so users see
   it with the population instead of in a worker's log (NULL: the normal
   end, a live member, or a member that ended before schema 5).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["SCHEMA_VERSION", "create_or_migrate", "read_version"]

#: Bump when the schema changes, and add a migration to ``MIGRATIONS``.
SCHEMA_VERSION = 5

_metadata = sa.MetaData()

# Every table on MariaDB/MySQL: UTF-8 for any name, and binary (case- and
# space-sensitive) comparison, so job ids "aB" and "Ab" and experiments "x"
# and "X " differ there as they do on SQLite and PostgreSQL.

_meta = sa.Table(
    "schedy_meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# Floats are sa.Double: MySQL's FLOAT is single precision (a timestamp would
# lose minutes); on SQLite and PostgreSQL both are the same double type.
_experiments = sa.Table(
    "schedy_experiments",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    # Number of claims so far, kept for seeded experiments only: it seeds the
    # RNG of each decision, so a single-worker run replays exactly.
    sa.Column("claims", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Double, nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

_jobs = sa.Table(
    "schedy_jobs",
    _metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("experiment_id", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("hyperparameters", sa.Text, nullable=False),
    sa.Column("results", sa.Text, nullable=False),
    sa.Column("member", sa.Integer),
    sa.Column("generation", sa.Integer),
    sa.Column("parent_id", sa.String(32)),
    sa.Column("exploited_from", sa.String(32)),
    sa.Column("error", sa.Text),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("lease_expires_at", sa.Double),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # Ranking value of a DONE job (higher is better; NULL when unranked), so
    # the best jobs are an index range scan, not a pass over the history.
    sa.Column("score", sa.Double),
    # Schema 2: results the job was added with by hand (see the module docstring).
    sa.Column("start_results", sa.Text),
    # Schema 3: the request id of the claim that created it (see the module docstring).
    sa.Column("claim_key", sa.String(64)),
    # Claims look up the oldest QUEUED and all RUNNING jobs of one experiment:
    # this index makes both a range scan whatever the history length.
    sa.Index("ix_schedy_jobs_exp_status_seq", "experiment_id", "status", "seq"),
    sa.Index("ix_schedy_jobs_exp_score", "experiment_id", "score"),
    sa.Index("ix_schedy_jobs_exp_claim_key", "experiment_id", "claim_key"),
    sa.Index("ix_schedy_jobs_exp_parent", "experiment_id", "parent_id"),
    # Schema 4: the expired leases are a range, however many jobs run.
    sa.Index("ix_schedy_jobs_exp_status_lease", "experiment_id", "status", "lease_expires_at"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

_members = sa.Table(
    "schedy_members",
    _metadata,
    sa.Column("experiment_id", sa.Integer, primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("head_id", sa.String(32)),
    sa.Column("head_generation", sa.Integer),
    sa.Column("score", sa.Double),
    sa.Column("busy_id", sa.String(32)),
    sa.Column("last_id", sa.String(32)),
    sa.Column("crashes", sa.Integer, nullable=False, default=0),
    sa.Column("ended", sa.Boolean, nullable=False, default=False),
    sa.Column("ready_since", sa.Double, nullable=False, default=0.0),
    # Recent (generation, score) pairs along the member's lineage, so members
    # at different generations can be compared at equal training progress.
    sa.Column("history", sa.Text),
    # Schema 5: why the member ended early (see the module docstring).
    sa.Column("ended_reason", sa.Text),
    # Schema 4: the ready member that waited longest is the first entry of
    # (ended = false, busy_id IS NULL) in this index.
    sa.Index("ix_schedy_members_ready", "experiment_id", "ended", "busy_id", "ready_since", "idx"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

_tokens = sa.Table(
    "schedy_tokens",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    # SHA-256 of the secret (random, so no salt or slow hash is needed); the
    # secret itself is shown once, when the token is created, and never kept.
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

TABLES = ("schedy_tokens", "schedy_members", "schedy_jobs", "schedy_experiments", "schedy_meta")


def _add_start_results(connection: Connection) -> None:
    connection.execute(sa.text("ALTER TABLE schedy_jobs ADD COLUMN start_results TEXT"))


def _add_claim_keys_and_tokens(connection: Connection) -> None:
    connection.execute(sa.text("ALTER TABLE schedy_jobs ADD COLUMN claim_key VARCHAR(64)"))
    for index in _jobs.indexes:
        if index.name in ("ix_schedy_jobs_exp_claim_key", "ix_schedy_jobs_exp_parent"):
            index.create(connection, checkfirst=True)
    _tokens.create(connection, checkfirst=True)


def _add_scale_indexes(connection: Connection) -> None:
    for table, name in (
        (_members, "ix_schedy_members_ready"),
        (_jobs, "ix_schedy_jobs_exp_status_lease"),
    ):
        for index in table.indexes:
            if index.name == name:
                index.create(connection, checkfirst=True)


def _add_ended_reason(connection: Connection) -> None:
    connection.execute(sa.text("ALTER TABLE schedy_members ADD COLUMN ended_reason TEXT"))


#: version -> function upgrading a store from ``version - 1``.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _add_start_results,
    3: _add_claim_keys_and_tokens,
    4: _add_scale_indexes,
    5: _add_ended_reason,
}


def read_version(connection: Connection) -> int | None:
    """The store's schema version; None for a database without schedy's tables."""
    if not sa.inspect(connection).has_table("schedy_meta"):
        return None
    value = connection.execute(
        sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
    ).scalar_one_or_none()
    return None if value is None else int(value)


def create_or_migrate(connection: Connection) -> None:
    """Create the tables, or bring an older store up to :data:`SCHEMA_VERSION`.

    Runs in one transaction that holds a database-wide lock where the
    database has one, so concurrent first opens of one store do not race.
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7315539)")
    elif dialect in ("mysql", "mariadb"):
        connection.exec_driver_sql("SELECT GET_LOCK('schedy_schema', 60)")
    try:
        current = read_version(connection)
        if current is None:
            _metadata.create_all(connection, checkfirst=True)
            connection.execute(
                sa.insert(_meta).values(key="schema_version", value=str(SCHEMA_VERSION))
            )
            return
        for target in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](connection)
        if current < SCHEMA_VERSION:
            connection.execute(
                sa.update(_meta)
                .where(_meta.c.key == "schema_version")
                .values(value=str(SCHEMA_VERSION))
            )
    finally:
        if dialect in ("mysql", "mariadb"):
            connection.exec_driver_sql("SELECT RELEASE_LOCK('schedy_schema')")
