"""Every statement the SQL storage runs, as raw SQL on the DBAPI cursor.

SQLAlchemy's per-execution bookkeeping costs ~50-100 us, several times what
SQLite needs to run these statements, and a scheduling cycle must stay under
a millisecond. So each statement is plain SQL with ``:name`` parameters,
compiled once per dialect by SQLAlchemy (paramstyles and quoting) and then
executed on the cursor of the transaction's DBAPI connection. The few
dialect differences (row locks, the database clock) are chosen here too.
Schema changes are not here: they are SQLAlchemy Core, in ``_schema``.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from typing import Any

import sqlalchemy as sa

from ..._records import JobStatus, MemberRecord

__all__ = ["Statement", "Transaction", "experiment_statement", "update", "write_member"]


class Transaction:
    """The two attributes of an SQLAlchemy ``Connection`` that :class:`Statement`
    uses, over a bare DBAPI connection: the hot path skips the ``Connection``
    object's own per-transaction overhead."""

    __slots__ = ("connection", "dialect")

    def __init__(self, dialect: sa.Dialect, connection: Any) -> None:
        self.dialect = dialect
        self.connection = connection


class Statement:
    """SQL with ``:name`` parameters, run on the raw DBAPI cursor of a transaction.

    Rows come back as the namedtuple ``row`` when given.
    """

    __slots__ = ("_compiled", "row", "sql")

    def __init__(self, sql: str, row: type[tuple[Any, ...]] | None = None) -> None:
        self.sql = sql
        self.row = row
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _driver_sql(self, transaction: Transaction) -> tuple[str, tuple[str, ...] | None]:
        dialect = transaction.dialect
        if dialect.name == "sqlite":
            return self.sql, None  # sqlite3 takes :name parameters natively
        key = f"{dialect.name}+{dialect.driver}"
        compiled = self._compiled.get(key)
        if compiled is None:
            clause = sa.text(self.sql).compile(dialect=dialect)
            order = tuple(clause.positiontup or ()) if clause.positional else None
            compiled = (str(clause), order)
            self._compiled[key] = compiled
        return compiled

    def _execute(self, transaction: Transaction, params: dict[str, Any]) -> Any:
        sql, order = self._driver_sql(transaction)
        cursor = transaction.connection.cursor()
        cursor.execute(sql, params if order is None else tuple(params[name] for name in order))
        return cursor

    def rows(self, transaction: Transaction, params: dict[str, Any]) -> list[Any]:
        cursor = self._execute(transaction, params)
        try:
            fetched = cursor.fetchall()
        finally:
            cursor.close()
        make = self.row._make if self.row is not None else tuple  # type: ignore[attr-defined]
        return [make(values) for values in fetched]

    def first(self, transaction: Transaction, params: dict[str, Any]) -> Any:
        found = self.rows(transaction, params)
        return found[0] if found else None

    def run(self, transaction: Transaction, params: dict[str, Any]) -> int:
        """Execute a write; return the number of rows it changed."""
        cursor = self._execute(transaction, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()


# -- rows -------------------------------------------------------------------------
_JOB_COLUMNS = (
    "seq, id, status, hyperparameters, results, member, generation, parent_id, "
    "exploited_from, error, lease_token, created_at, updated_at"
)
ExperimentRow = namedtuple("ExperimentRow", "id name kind status config claims created_at clock")
JobRow = namedtuple(
    "JobRow",
    "seq id status hyperparameters results member generation parent_id exploited_from error "
    "lease_token created_at updated_at",
)
ExpiredRow = namedtuple("ExpiredRow", "seq id member generation lease_expires_at")
_MEMBER_COLUMNS = (
    "idx, head_id, head_generation, score, busy_id, last_id, crashes, ended, ready_since, history, "
    "ended_reason"
)

# -- experiments ------------------------------------------------------------------
# ``clock`` is the lease clock. On a database server it is the server's
# (workers on other machines may disagree about the time), read with the
# experiment row that every transaction reads first, saving a round trip;
# SQLite is local and takes the process clock. A locked row's clock must be
# read *after* any wait for the lock: read before it, a claim that waited for
# a finishing job would be stamped earlier than that job's end. PostgreSQL
# evaluates the select list before locking, so the row is locked in a
# subquery; InnoDB locks the row as it reads it, before SYSDATE() (the time
# of the call, unlike NOW()) is evaluated.
_EXPERIMENT_COLUMNS = "id, name, kind, status, config, claims, created_at"
_SELECT_EXPERIMENT = f"SELECT {_EXPERIMENT_COLUMNS} FROM schedy_experiments WHERE name = :name"
_CLOCKS = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "mysql": "UNIX_TIMESTAMP(SYSDATE(6))",
}
_EXPERIMENT_STATEMENTS: dict[tuple[str, bool], Statement] = {
    ("sqlite", False): Statement(
        f"SELECT {_EXPERIMENT_COLUMNS}, NULL AS clock FROM schedy_experiments WHERE name = :name",
        ExperimentRow,
    ),
    ("postgresql", False): Statement(
        f"SELECT {_EXPERIMENT_COLUMNS}, {_CLOCKS['postgresql']} AS clock "
        "FROM schedy_experiments WHERE name = :name",
        ExperimentRow,
    ),
    ("postgresql", True): Statement(
        f"SELECT {_EXPERIMENT_COLUMNS}, {_CLOCKS['postgresql']} AS clock "
        f"FROM ({_SELECT_EXPERIMENT} FOR UPDATE) AS locked",
        ExperimentRow,
    ),
    ("mysql", False): Statement(
        f"SELECT {_EXPERIMENT_COLUMNS}, {_CLOCKS['mysql']} AS clock "
        "FROM schedy_experiments WHERE name = :name",
        ExperimentRow,
    ),
    ("mysql", True): Statement(
        f"SELECT {_EXPERIMENT_COLUMNS}, {_CLOCKS['mysql']} AS clock "
        "FROM schedy_experiments WHERE name = :name FOR UPDATE",
        ExperimentRow,
    ),
}
#: SQLite needs no row lock: BEGIN IMMEDIATE already serializes writers.
_EXPERIMENT_STATEMENTS["sqlite", True] = _EXPERIMENT_STATEMENTS["sqlite", False]
DB_CLOCK = {family: Statement(f"SELECT {clock}") for family, clock in _CLOCKS.items()}


def family(dialect: str) -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB speaks MySQL here)."""
    return "mysql" if dialect in ("mysql", "mariadb") else dialect


def experiment_statement(dialect: str, lock: bool) -> Statement:
    """The statement reading an experiment row (and the clock), locked for a write."""
    return _EXPERIMENT_STATEMENTS[family(dialect), lock]


EXPERIMENT_EXISTS = Statement("SELECT id FROM schedy_experiments WHERE name = :name")
ALL_EXPERIMENTS = Statement(
    f"SELECT {_EXPERIMENT_COLUMNS}, NULL AS clock FROM schedy_experiments ORDER BY id",
    ExperimentRow,
)
INSERT_EXPERIMENT = Statement(
    "INSERT INTO schedy_experiments (name, kind, status, config, claims, created_at) "
    "VALUES (:name, :kind, :status, :config, 0, :created_at)"
)
DELETE_EXPERIMENT = (
    Statement("DELETE FROM schedy_jobs WHERE experiment_id = :experiment_id"),
    Statement("DELETE FROM schedy_members WHERE experiment_id = :experiment_id"),
    Statement("DELETE FROM schedy_experiments WHERE id = :experiment_id"),
)
COUNT_CLAIM = Statement("UPDATE schedy_experiments SET claims = claims + 1 WHERE id = :id")

# -- jobs -------------------------------------------------------------------------
#: The statuses the statements name, as SQL string literals built from the enum
#: once, here (the SQL text is the same as with the strings written out).
_QUEUED = f"'{JobStatus.QUEUED.value}'"
_RUNNING = f"'{JobStatus.RUNNING.value}'"
JOB = Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE id = :id AND experiment_id = :experiment_id",
    JobRow,
)
JOB_START_RESULTS = Statement("SELECT start_results FROM schedy_jobs WHERE id = :id")
JOB_SEQ = Statement("SELECT seq FROM schedy_jobs WHERE id = :id AND experiment_id = :experiment_id")
JOBS_PAGE = Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE experiment_id = :experiment_id "
    "AND seq > :after ORDER BY seq LIMIT :limit",
    JobRow,
)
OLDEST_QUEUED = Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE experiment_id = :experiment_id "
    f"AND status = {_QUEUED} ORDER BY seq LIMIT 1",
    JobRow,
)
EXPIRED = Statement(
    "SELECT seq, id, member, generation, lease_expires_at FROM schedy_jobs "
    f"WHERE experiment_id = :experiment_id AND status = {_RUNNING} AND lease_expires_at < :now",
    ExpiredRow,
)
ACTIVE_JOBS = Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE experiment_id = :experiment_id "
    f"AND (status IN ({_QUEUED}, {_RUNNING}) OR id IN (SELECT head_id FROM schedy_members "
    "WHERE experiment_id = :experiment_id))",
    JobRow,
)
TOP_JOBS = Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE experiment_id = :experiment_id "
    "AND score IS NOT NULL ORDER BY score DESC, seq LIMIT :limit",
    JobRow,
)
INSERT_JOB = Statement(
    "INSERT INTO schedy_jobs (id, experiment_id, status, hyperparameters, results, member, "
    "generation, parent_id, exploited_from, lease_token, lease_expires_at, created_at, "
    "updated_at, start_results, claim_key) VALUES (:id, :experiment_id, :status, "
    ":hyperparameters, :results, :member, :generation, :parent_id, :exploited_from, "
    ":lease_token, :lease_expires_at, :created_at, :updated_at, :start_results, :claim_key)"
)
#: The job a claim made, the latest first (a retried claim returns it rather
#: than making another). Only (experiment_id, claim_key) in the WHERE: with
#: ``status = 'RUNNING'`` too, SQLite and PostgreSQL walked every RUNNING job
#: -- a fleet's worth -- by ix_schedy_jobs_exp_status_seq instead of probing
#: ix_schedy_jobs_exp_claim_key; the caller checks that the job still runs.
CLAIMED_BY = Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE experiment_id = :experiment_id "
    "AND claim_key = :claim_key ORDER BY seq DESC LIMIT 1",
    JobRow,
)
CHILD = Statement(
    "SELECT id FROM schedy_jobs WHERE experiment_id = :experiment_id AND parent_id = :id LIMIT 1"
)
TAKE_QUEUED = Statement(
    f"UPDATE schedy_jobs SET status = {_RUNNING}, member = :member, generation = :generation, "
    "lease_token = :lease_token, lease_expires_at = :lease_expires_at, updated_at = :updated_at, "
    "claim_key = :claim_key WHERE id = :id"
)
DELETE_JOB = Statement("DELETE FROM schedy_jobs WHERE seq = :seq")
RENEW = Statement(
    "UPDATE schedy_jobs SET lease_expires_at = :expires WHERE id = :id "
    f"AND experiment_id = :experiment_id AND status = {_RUNNING} AND lease_token = :token"
)

# -- tokens -----------------------------------------------------------------------
TokenRow = namedtuple("TokenRow", "name role created_at revoked_at")
_TOKEN_COLUMNS = "name, role, created_at, revoked_at"
ALL_TOKENS = Statement(f"SELECT {_TOKEN_COLUMNS} FROM schedy_tokens ORDER BY id", TokenRow)
TOKEN_NAMED = Statement(f"SELECT {_TOKEN_COLUMNS} FROM schedy_tokens WHERE name = :name", TokenRow)
ACTIVE_TOKEN = Statement(
    f"SELECT {_TOKEN_COLUMNS} FROM schedy_tokens WHERE secret_hash = :secret_hash "
    "AND revoked_at IS NULL",
    TokenRow,
)
INSERT_TOKEN = Statement(
    "INSERT INTO schedy_tokens (name, role, secret_hash, created_at) "
    "VALUES (:name, :role, :secret_hash, :created_at)"
)
REVOKE_TOKEN = Statement(
    "UPDATE schedy_tokens SET revoked_at = :now WHERE name = :name AND revoked_at IS NULL"
)

# -- members ----------------------------------------------------------------------
MEMBERS = Statement(
    f"SELECT {_MEMBER_COLUMNS} FROM schedy_members WHERE experiment_id = :experiment_id "
    "ORDER BY idx",
    MemberRecord,
)
MEMBER = Statement(
    f"SELECT {_MEMBER_COLUMNS} FROM schedy_members "
    "WHERE experiment_id = :experiment_id AND idx = :idx",
    MemberRecord,
)
#: The highest member index: members are numbered 0, 1, … as they are created,
#: so this is the population's size minus one (a primary-key lookup, no scan).
LAST_MEMBER = Statement("SELECT MAX(idx) FROM schedy_members WHERE experiment_id = :experiment_id")
#: The ready member that waited longest (ix_schedy_members_ready: one index probe;
#: the ORDER BY names the index's columns, or PostgreSQL, which does not take
#: ``busy_id IS NULL`` as fixing busy_id's order, sorts the whole population).
OLDEST_READY = Statement(
    f"SELECT {_MEMBER_COLUMNS} FROM schedy_members WHERE experiment_id = :experiment_id "
    "AND ended = :ended AND busy_id IS NULL ORDER BY ended, busy_id, ready_since, idx LIMIT 1",
    MemberRecord,
)
#: Any member still live (with none ready: a running one), so a decision says Wait.
A_LIVE_MEMBER = Statement(
    f"SELECT {_MEMBER_COLUMNS} FROM schedy_members WHERE experiment_id = :experiment_id "
    "AND ended = :ended LIMIT 1",
    MemberRecord,
)


@functools.lru_cache(maxsize=16)
def members_in(count: int) -> Statement:
    """Members by index, ``count`` of them (``:i0``, ``:i1``, …): a sample's read."""
    names = ", ".join(f":i{i}" for i in range(count))
    return Statement(
        f"SELECT {_MEMBER_COLUMNS} FROM schedy_members WHERE experiment_id = :experiment_id "
        f"AND idx IN ({names})",
        MemberRecord,
    )


_INSERT_MEMBER = Statement(
    "INSERT INTO schedy_members (experiment_id, idx, head_id, head_generation, score, busy_id, "
    "last_id, crashes, ended, ready_since, history, ended_reason) VALUES (:experiment_id, "
    ":index, :head_id, :head_generation, :score, :busy_id, :last_id, :crashes, :ended, "
    ":ready_since, :history, :ended_reason)"
)
_MEMBER_KEY = "experiment_id = :key_experiment_id AND idx = :key_idx"
#: MemberRecord field -> its column.
_MEMBER_COLUMN = {field: ("idx" if field == "index" else field) for field in MemberRecord._fields}


@functools.lru_cache(maxsize=128)
def _update_statement(table: str, key: str, columns: tuple[str, ...]) -> Statement:
    """``UPDATE table SET c = :c, … WHERE key`` for one set of columns, built once."""
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    return Statement(f"UPDATE {table} SET {assignments} WHERE {key}")


def update(transaction: Transaction, table: str, key: str, values: dict[str, Any]) -> None:
    """Run a cached UPDATE; ``values`` holds the new columns and the key's ``key_`` parameters."""
    columns = tuple(sorted(name for name in values if not name.startswith("key_")))
    _update_statement(table, key, columns).run(transaction, values)


def write_member(
    transaction: Transaction,
    experiment_id: int,
    before: MemberRecord | None,
    after: MemberRecord,
) -> None:
    """Store ``after``: insert a new member, or update the columns that differ from ``before``."""
    if before is None:
        _INSERT_MEMBER.run(
            transaction, dict(after._asdict(), experiment_id=experiment_id, ended=bool(after.ended))
        )
        return
    changes = {
        _MEMBER_COLUMN[field]: new
        for field, old, new in zip(MemberRecord._fields, before, after)
        if old != new
    }
    if changes:
        changes.update(key_experiment_id=experiment_id, key_idx=after.index)
        update(transaction, "schedy_members", _MEMBER_KEY, changes)
