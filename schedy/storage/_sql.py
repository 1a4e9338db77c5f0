"""SQL storage on SQLAlchemy Core: SQLite (embedded default), PostgreSQL, MySQL.

Every method is one transaction run by :meth:`SQLStorage._run`, which also
translates driver errors into schedy errors and retries the whole transaction
when the database reports lock contention (SQLite ``database is locked``,
PostgreSQL deadlocks or serialization failures) — so contention never reaches
the user.

Serialization: every write locks the experiment's row first (``SELECT … FOR
UPDATE`` on PostgreSQL/MySQL; on SQLite every write transaction is ``BEGIN
IMMEDIATE``, which takes the database write lock up front instead of failing
on upgrade). Claims for one experiment are therefore strictly ordered and no
job can be handed out twice.

Scheduling cost stays flat: a claim reads the experiment row, the running jobs
(to expire leases), the oldest queued job, the population summary and at most
two jobs by primary key — never the job history.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from .. import _history as _scores
from .. import _values
from .._records import (
    Claim,
    ExperimentRecord,
    ExperimentStatus,
    JobRecord,
    JobStatus,
    JobUpdate,
    MemberRecord,
)
from .._scheduling import (
    CreateJob,
    Decision,
    EndMember,
    Exhausted,
    SchedulingState,
    TakeQueued,
    Wait,
)
from ..errors import (
    NotFoundError,
    ResourceExistsError,
    SchemaVersionError,
    StorageError,
    UnsafeUpdateError,
)
from ._base import Storage

CRASHED, DONE, PRUNED, RUNNING = (
    JobStatus.CRASHED,
    JobStatus.DONE,
    JobStatus.PRUNED,
    JobStatus.RUNNING,
)
EXPERIMENT_DONE = ExperimentStatus.DONE
JOB_STATUSES = tuple(JobStatus)
EXPERIMENT_STATUSES = tuple(ExperimentStatus)

if TYPE_CHECKING:
    from ..experiments import Experiment

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Bump when the schema changes, and add a migration to ``_MIGRATIONS``.
SCHEMA_VERSION = 1

#: Total time a transaction may keep retrying on lock contention.
_CONTENTION_BUDGET_S = 300.0

_metadata = sa.MetaData()

_meta = sa.Table(
    "schedy_meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

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
    # ready members, without a second counter to maintain.
    sa.Column("claims", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
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
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Ranking value of a DONE job (higher is better; NULL when unranked), so
    # the best jobs are an index range scan, not a pass over the history.
    sa.Column("score", sa.Float),
    # Claims look up the oldest QUEUED and all RUNNING jobs of one experiment:
    # this index makes both a range scan whatever the history length.
    sa.Index("ix_schedy_jobs_exp_status_seq", "experiment_id", "status", "seq"),
    sa.Index("ix_schedy_jobs_exp_score", "experiment_id", "score"),
)

_members = sa.Table(
    "schedy_members",
    _metadata,
    sa.Column("experiment_id", sa.Integer, primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("head_id", sa.String(32)),
    sa.Column("head_generation", sa.Integer),
    sa.Column("score", sa.Float),
    sa.Column("busy_id", sa.String(32)),
    sa.Column("last_id", sa.String(32)),
    sa.Column("crashes", sa.Integer, nullable=False, default=0),
    sa.Column("ended", sa.Boolean, nullable=False, default=False),
    sa.Column("ready_since", sa.Float, nullable=False, default=0.0),
    # Recent (generation, score) pairs along the member's lineage, so members
    # at different generations can be compared at equal training progress.
    sa.Column("history", sa.Text),
)

#: version -> function upgrading a store from ``version - 1`` (none yet).
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {}


class _RawConnection:
    """The two attributes of an SQLAlchemy ``Connection`` that ``_Statement``
    uses, over a bare pooled DBAPI connection: the hot path skips the
    ``Connection`` object's own per-transaction overhead."""

    __slots__ = ("connection", "dialect")

    def __init__(self, dialect: sa.Dialect, connection: Any) -> None:
        self.dialect = dialect
        self.connection = connection


class _Statement:
    """SQL with ``:name`` parameters, run on the raw DBAPI cursor of a connection.

    SQLAlchemy's per-execution bookkeeping costs ~50-100 us, several times
    what SQLite needs to run these statements, and a scheduling cycle must
    stay under a millisecond. So the hot path compiles each statement once per
    dialect (SQLAlchemy still handles paramstyles and quoting) and then
    executes it on the DBAPI cursor inside the transaction SQLAlchemy began.
    Rows come back as the namedtuple ``row`` when given.
    """

    __slots__ = ("_compiled", "row", "sql")

    def __init__(self, sql: str, row: type[tuple[Any, ...]] | None = None) -> None:
        self.sql = sql
        self.row = row
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _driver_sql(self, connection: Connection) -> tuple[str, tuple[str, ...] | None]:
        dialect = connection.dialect
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

    def _execute(self, connection: Connection, params: dict[str, Any]) -> Any:
        sql, order = self._driver_sql(connection)
        cursor = connection.connection.cursor()
        cursor.execute(sql, params if order is None else tuple(params[name] for name in order))
        return cursor

    def rows(self, connection: Connection, params: dict[str, Any]) -> list[Any]:
        cursor = self._execute(connection, params)
        try:
            fetched = cursor.fetchall()
        finally:
            cursor.close()
        make = self.row._make if self.row is not None else tuple  # type: ignore[attr-defined]
        return [make(values) for values in fetched]

    def first(self, connection: Connection, params: dict[str, Any]) -> Any:
        found = self.rows(connection, params)
        return found[0] if found else None

    def run(self, connection: Connection, params: dict[str, Any]) -> int:
        """Execute a write; return the number of rows it changed."""
        cursor = self._execute(connection, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()


_JOB_COLUMNS = (
    "seq, id, status, hyperparameters, results, member, generation, parent_id, "
    "exploited_from, error, lease_token, created_at, updated_at"
)
_ExperimentRow = namedtuple("_ExperimentRow", "id name kind status config claims clock")
_JobRow = namedtuple(
    "_JobRow",
    "seq id status hyperparameters results member generation parent_id exploited_from error "
    "lease_token created_at updated_at",
)
_ExpiredRow = namedtuple("_ExpiredRow", "seq id member generation lease_expires_at")
_MemberStateRow = namedtuple("_MemberStateRow", "busy_id crashes history")

# ``clock`` is the lease clock. On PostgreSQL it is the server's (workers on
# other machines may disagree about the time), read with the experiment row
# that every transaction reads first, saving a round trip; SQLite is local
# and takes the process clock. The row is locked in a subquery so that the
# clock is read *after* any wait for the lock: read before it, a claim that
# waited for a finishing job would be stamped earlier than that job's end.
_EXPERIMENT_COLUMNS = "id, name, kind, status, config, claims"
_PG_CLOCK = "extract(epoch from clock_timestamp())"
_SELECT_EXPERIMENT = f"SELECT {_EXPERIMENT_COLUMNS} FROM schedy_experiments WHERE name = :name"
_WITH_NO_CLOCK = (
    f"SELECT {_EXPERIMENT_COLUMNS}, NULL AS clock FROM schedy_experiments WHERE name = :name"
)
_WITH_PG_CLOCK = f"SELECT {_EXPERIMENT_COLUMNS}, {_PG_CLOCK} AS clock FROM "
#: (PostgreSQL?, locked?) -> the statement reading an experiment row.
_EXPERIMENT_STATEMENTS = {
    (False, False): _Statement(_WITH_NO_CLOCK, _ExperimentRow),
    (False, True): _Statement(_WITH_NO_CLOCK + " FOR UPDATE", _ExperimentRow),
    (True, False): _Statement(
        _WITH_PG_CLOCK + "schedy_experiments WHERE name = :name", _ExperimentRow
    ),
    (True, True): _Statement(
        _WITH_PG_CLOCK + f"({_SELECT_EXPERIMENT} FOR UPDATE) AS locked", _ExperimentRow
    ),
}
_SQL_JOB = _Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE id = :id AND experiment_id = :experiment_id",
    _JobRow,
)
_SQL_OLDEST_QUEUED = _Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE experiment_id = :experiment_id "
    "AND status = 'QUEUED' ORDER BY seq LIMIT 1",
    _JobRow,
)
_SQL_EXPIRED = _Statement(
    "SELECT seq, id, member, generation, lease_expires_at FROM schedy_jobs "
    "WHERE experiment_id = :experiment_id AND status = 'RUNNING' AND lease_expires_at < :now",
    _ExpiredRow,
)
_SQL_MEMBERS = _Statement(
    "SELECT idx, head_id, head_generation, score, busy_id, last_id, crashes, ended, ready_since, "
    "history "
    "FROM schedy_members WHERE experiment_id = :experiment_id ORDER BY idx",
    MemberRecord,
)
_SQL_MEMBER = _Statement(
    "SELECT busy_id, crashes, history FROM schedy_members "
    "WHERE experiment_id = :experiment_id AND idx = :idx",
    _MemberStateRow,
)
_SQL_ACTIVE_JOBS = _Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE experiment_id = :experiment_id "
    "AND (status IN ('QUEUED', 'RUNNING') OR id IN (SELECT head_id FROM schedy_members "
    "WHERE experiment_id = :experiment_id))",
    _JobRow,
)
_SQL_TOP_JOBS = _Statement(
    f"SELECT {_JOB_COLUMNS} FROM schedy_jobs WHERE experiment_id = :experiment_id "
    "AND score IS NOT NULL ORDER BY score DESC, seq LIMIT :limit",
    _JobRow,
)
_SQL_DB_CLOCK = _Statement(f"SELECT {_PG_CLOCK}")
_SQL_COUNT_CLAIM = _Statement("UPDATE schedy_experiments SET claims = claims + 1 WHERE id = :id")
_SQL_INSERT_JOB = _Statement(
    "INSERT INTO schedy_jobs (id, experiment_id, status, hyperparameters, results, member, "
    "generation, parent_id, exploited_from, lease_token, lease_expires_at, created_at, "
    "updated_at) VALUES (:id, :experiment_id, :status, :hyperparameters, :results, :member, "
    ":generation, :parent_id, :exploited_from, :lease_token, :lease_expires_at, :created_at, "
    ":updated_at)"
)
_SQL_TAKE_QUEUED = _Statement(
    "UPDATE schedy_jobs SET status = 'RUNNING', member = :member, generation = :generation, "
    "lease_token = :lease_token, lease_expires_at = :lease_expires_at, updated_at = :updated_at "
    "WHERE id = :id"
)
_SQL_MEMBER_BUSY = _Statement(
    "UPDATE schedy_members SET busy_id = :job_id, last_id = :job_id "
    "WHERE experiment_id = :experiment_id AND idx = :idx"
)
_SQL_MEMBER_BUSY_COPY = _Statement(
    "UPDATE schedy_members SET busy_id = :job_id, last_id = :job_id, history = :history "
    "WHERE experiment_id = :experiment_id AND idx = :idx"
)
_SQL_INSERT_MEMBER = _Statement(
    "INSERT INTO schedy_members "
    "(experiment_id, idx, busy_id, last_id, crashes, ended, ready_since) "
    "VALUES (:experiment_id, :idx, :job_id, :job_id, 0, :ended, 0)"
)
_SQL_RENEW = _Statement(
    "UPDATE schedy_jobs SET lease_expires_at = :expires WHERE id = :id "
    "AND status = 'RUNNING' AND lease_token = :token"
)


@functools.lru_cache(maxsize=64)
def _update_statement(table: str, key: str, columns: tuple[str, ...]) -> _Statement:
    """``UPDATE table SET c = :c, … WHERE key`` for one set of columns, built once."""
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    return _Statement(f"UPDATE {table} SET {assignments} WHERE {key}")


def _update(connection: Connection, table: str, key: str, values: dict[str, Any]) -> None:
    """Run a cached UPDATE; ``values`` holds the new columns and the key's parameters."""
    columns = tuple(sorted(name for name in values if not name.startswith("key_")))
    _update_statement(table, key, columns).run(connection, values)


_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _new_job_id() -> str:
    """10 base62 characters (~59 bits): short like the original ids, never starting with '-'."""
    number = int.from_bytes(secrets.token_bytes(8), "big")
    chars = []
    for _ in range(10):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def _is_contention(error: BaseException | None) -> bool:
    """Lock contention worth retrying, as opposed to a real failure."""
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if sqlstate in ("40001", "40P01", "55P03"):  # serialization, deadlock, lock not available
        return True
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


class _IntegrityConflict(StorageError):
    """A uniqueness clash; create_experiment turns it into ResourceExistsError."""


class _CommitLost(StorageError):
    """The connection died during COMMIT: whether it took effect is unknown."""


class _ConnectionLost(Exception):
    """The database connection died before the transaction committed.

    Nothing was written (the server rolls back a transaction whose
    connection is gone), so ``_run`` may run it again on a fresh connection:
    that is how a server restart or an idle-connection timeout stays
    invisible, without pinging before every transaction.
    """


def _encoded(
    values: dict[str, Any], what: str, stored_text: dict[int, str]
) -> tuple[dict[str, Any], str]:
    """``values`` checked and as JSON text; reused as stored when it was loaded unchanged."""
    text = stored_text.get(id(values))
    if text is not None:
        return values, text
    normalized = _values.normalize_mapping(values, what)
    return normalized, _values.dumps(normalized)


class SQLStorage(Storage):
    """Storage on any SQLAlchemy URL. See the module docstring."""

    def __init__(self, url: str, *, echo: bool = False, **engine_options: Any) -> None:
        self.url = url
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as error:
            raise ValueError(f"invalid database URL {url!r}: {error}") from None
        self._dialect = parsed.get_backend_name()
        self._is_sqlite = self._dialect == "sqlite"
        self._experiment_cache: dict[tuple[str, str, str], Experiment] = {}
        self._cache_lock = threading.Lock()
        self._local = threading.local()
        if self._is_sqlite:
            self._engine = self._sqlite_engine(parsed, echo, engine_options)
        else:
            # No pool_pre_ping: a ping is a round trip per transaction; a dead
            # connection is detected on first use and the transaction re-run.
            try:
                self._engine = sa.create_engine(parsed, echo=echo, **engine_options)
            except ModuleNotFoundError as error:
                raise StorageError(
                    f"the driver for {parsed.drivername} is not installed ({error}); "
                    "for PostgreSQL install it with: pip install 'schedy[postgres]'"
                ) from None
        dbapi = self._engine.dialect.dbapi
        self._dbapi_error: type[Exception] = getattr(dbapi, "Error", SQLAlchemyError)
        self._dbapi_integrity_error: type[Exception] = getattr(
            dbapi, "IntegrityError", IntegrityError
        )
        if hasattr(os, "register_at_fork"):
            # A forked worker must not reuse the parent's connections.
            os.register_at_fork(after_in_child=self._after_fork)
        self._ensure_schema()

    # -- engine setup ------------------------------------------------------
    @staticmethod
    def _sqlite_engine(parsed: sa.URL, echo: bool, options: dict[str, Any]) -> Engine:
        database = parsed.database or ""
        in_memory = database in ("", ":memory:")
        if not in_memory:
            directory = os.path.dirname(os.path.abspath(database))
            if not os.path.isdir(directory):
                raise StorageError(
                    f"cannot open SQLite database {database!r}: folder {directory!r} does "
                    "not exist; create it or pick another path."
                )
        engine_kwargs: dict[str, Any] = {
            # Connections move between the worker and its heartbeat thread.
            "connect_args": {"check_same_thread": False, "timeout": 60},
        }
        if in_memory:
            engine_kwargs["poolclass"] = sa.pool.StaticPool
        engine_kwargs.update(options)
        engine = sa.create_engine(parsed, echo=echo, **engine_kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let us issue BEGIN ourselves (pysqlite would defer it and then
            # fail to upgrade a read lock under contention).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout = 60000")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                # WAL + NORMAL: durable across process crashes, no fsync per commit.
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            if connection.get_execution_options().get("schedy_read_only"):
                connection.exec_driver_sql("BEGIN")
            else:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _raw_connection(self) -> Any:
        """A DBAPI connection for one hot-path transaction.

        SQLite keeps one per thread, detached from the pool: opening a local
        file needs no pooling, and skipping check-out/check-in saves ~50 us
        per scheduling cycle. Other databases use the pool (with pre-ping).
        """
        if not self._is_sqlite:
            return self._engine.raw_connection()
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._engine.raw_connection()
            connection.detach()
            self._local.connection = connection
        return connection

    def _release_raw(self, connection: Any, broken: bool, lost: bool = False) -> None:
        if not self._is_sqlite:
            if lost:
                # Dead, and its idle siblings likely too (a server restart):
                # start a fresh pool rather than meet them one by one.
                connection.invalidate()
                self._engine.dispose(close=False)
            else:
                connection.close()
        elif broken:
            # A failed transaction may leave the connection unusable: start afresh.
            self._local.connection = None
            connection.close()

    def _after_fork(self) -> None:
        self._local = threading.local()
        self._engine.dispose(close=False)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.close()
        self._engine.dispose()

    # -- transactions ------------------------------------------------------
    @contextmanager
    def _connect(self, write: bool, raw: bool) -> Iterator[Any]:
        """One transaction: an SQLAlchemy ``Connection``, or with ``raw`` a
        :class:`_RawConnection` for the hot path (statements only)."""
        if raw:
            dbapi_connection = self._raw_connection()
            try:
                if self._is_sqlite:
                    dbapi_connection.cursor().execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield _RawConnection(self._engine.dialect, dbapi_connection)
                except self._dbapi_error as error:
                    if self._is_lost(error, dbapi_connection):
                        raise _ConnectionLost(error) from error
                    raise
                self._commit(dbapi_connection.commit, dbapi_connection)
            except BaseException as error:
                lost = isinstance(error, (_ConnectionLost, _CommitLost))
                try:
                    if not lost:
                        dbapi_connection.rollback()
                finally:
                    broken = lost or isinstance(error, (self._dbapi_error, SQLAlchemyError))
                    self._release_raw(dbapi_connection, broken=broken, lost=lost)
                raise
            self._release_raw(dbapi_connection, broken=False)
            return
        connection = self._engine.connect()
        if not write:
            connection = connection.execution_options(schedy_read_only=True)
        try:
            transaction = connection.begin()
            try:
                yield connection
            except DBAPIError as error:
                if error.connection_invalidated:
                    raise _ConnectionLost(error) from error
                raise
            self._commit(transaction.commit, None)
        finally:
            connection.close()

    def _is_lost(self, error: BaseException, dbapi_connection: Any) -> bool:
        """Whether ``error`` means the connection itself is gone (not a bad statement)."""
        if isinstance(error, DBAPIError):
            return bool(error.connection_invalidated)
        if dbapi_connection is None:
            return False
        dialect: Any = self._engine.dialect
        return bool(dialect.is_disconnect(error, dbapi_connection.dbapi_connection, None))

    def _commit(self, commit: Callable[[], None], dbapi_connection: Any) -> None:
        """Commit; a connection lost *while committing* leaves the outcome
        unknown, so that is reported, never silently re-run."""
        try:
            commit()
        except (SQLAlchemyError, self._dbapi_error) as error:
            original = error.orig if isinstance(error, DBAPIError) else error
            if self._is_lost(error, dbapi_connection):
                raise _CommitLost(
                    f"lost the connection to {self._safe_url()} while committing: the last "
                    f"change may or may not have been stored ({original}). Check the job's "
                    "status (schedy list) before retrying."
                ) from error
            raise

    def _run(self, body: Callable[[Any], T], write: bool = True, raw: bool = False) -> T:
        """Run ``body`` in one transaction, retrying it on lock contention.

        Driver errors arrive either wrapped by SQLAlchemy (``DBAPIError``) or
        raw from the hot path's DBAPI cursor; both are handled here, once.
        """
        deadline = time.monotonic() + _CONTENTION_BUDGET_S
        delay = 0.002
        reconnects = 0
        while True:
            try:
                with self._connect(write, raw) as connection:
                    return body(connection)
            except _ConnectionLost as lost:
                # Nothing was written: re-run on a fresh connection (a pooled
                # one that died idle); losing it again and again is an outage.
                reconnects += 1
                if reconnects <= 2:
                    continue
                raise StorageError(
                    f"lost the connection to {self._safe_url()} ({lost.__cause__}). Check "
                    "that the database is running and reachable; nothing was written."
                ) from lost.__cause__
            except (SQLAlchemyError, self._dbapi_error) as error:
                original = error.orig if isinstance(error, DBAPIError) else error
                if not isinstance(error, SQLAlchemyError) or isinstance(error, DBAPIError):
                    if _is_contention(original):
                        if time.monotonic() < deadline:
                            time.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
                            delay = min(delay * 2, 0.25)
                            continue
                        raise StorageError(
                            f"{self._safe_url()} stayed locked for {_CONTENTION_BUDGET_S:.0f}s; "
                            "another process holds a long transaction. Nothing was written."
                        ) from error
                    if isinstance(error, IntegrityError) or isinstance(
                        original, self._dbapi_integrity_error
                    ):
                        if "schedy_jobs" in str(original) and time.monotonic() < deadline:
                            continue  # a job id clash: draw another id
                        raise _IntegrityConflict(str(original)) from error
                if "no such column" in str(original) or "no such table" in str(original):
                    raise StorageError(
                        f"{self._safe_url()} does not have the tables this schedy expects "
                        f"({original}): it was probably written by a development version of "
                        "schedy. Use a new store file, or export and re-create the experiments."
                    ) from error
                raise StorageError(
                    f"database error on {self._safe_url()}: {original}. Check that the "
                    "database is running and the URL is right; nothing was written."
                ) from error

    def _safe_url(self) -> str:
        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except SQLAlchemyError:
            return "the database"

    def _now(self, connection: Connection, exp_row: Any = None) -> float:
        """Lease clock: the database server's on PostgreSQL, so machines can
        disagree; taken from ``exp_row`` when this transaction just read one."""
        if self._dialect == "postgresql":
            if exp_row is not None and exp_row.clock is not None:
                return float(exp_row.clock)
            return float(_SQL_DB_CLOCK.first(connection, {})[0])
        return time.time()

    # -- schema ------------------------------------------------------------
    def _ensure_schema(self) -> None:
        def read_version(connection: Connection) -> int | None:
            if not sa.inspect(connection).has_table("schedy_meta"):
                return None
            value = connection.execute(
                sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
            ).scalar_one_or_none()
            return None if value is None else int(value)

        version = self._run(read_version, write=False)
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self._safe_url()} was written by a newer schedy (schema {version}, this "
                f"schedy knows {SCHEMA_VERSION}); upgrade schedy: pip install -U schedy"
            )

        def create_or_migrate(connection: Connection) -> None:
            if self._dialect == "postgresql":
                # Serialize concurrent first opens of an empty database.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7315539)")
            current = read_version(connection)
            if current is None:
                _metadata.create_all(connection, checkfirst=True)
                connection.execute(
                    sa.insert(_meta).values(key="schema_version", value=str(SCHEMA_VERSION))
                )
                return
            for target in range(current + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[target](connection)
            connection.execute(
                sa.update(_meta)
                .where(_meta.c.key == "schema_version")
                .values(value=str(SCHEMA_VERSION))
            )

        self._run(create_or_migrate)

    # -- helpers -----------------------------------------------------------
    def _experiment_row(self, connection: Connection, name: str, lock: bool) -> Any:
        # SQLite needs no row lock: BEGIN IMMEDIATE already serializes writers.
        locked = lock and not self._is_sqlite
        statement = _EXPERIMENT_STATEMENTS[self._dialect == "postgresql", locked]
        row = statement.first(connection, {"name": name})
        if row is None:
            raise NotFoundError(
                f"no experiment named {name!r} in {self._safe_url()}; "
                "list them with `schedy list` or create it with db.add_experiment()."
            )
        return row

    def _experiment_object(self, row: Any) -> Experiment:
        """Parse an experiment's config once per (name, kind, config) and reuse it."""
        key = (row.name, row.kind, row.config)
        cached = self._experiment_cache.get(key)
        if cached is not None:
            return cached
        from ..experiments import _experiment_from_record

        experiment = _experiment_from_record(self._experiment_record(row))
        with self._cache_lock:
            if len(self._experiment_cache) > 256:
                self._experiment_cache.clear()
            self._experiment_cache[key] = experiment
        return experiment

    @staticmethod
    def _experiment_record(row: Any) -> ExperimentRecord:
        return ExperimentRecord(
            name=row.name, kind=row.kind, status=row.status, config=_values.loads(row.config)
        )

    @staticmethod
    def _job_record(row: Any, experiment: str, with_token: bool = False) -> JobRecord:
        return JobRecord(
            id=row.id,
            experiment=experiment,
            status=row.status,
            hyperparameters=_values.loads(row.hyperparameters),
            results=_values.loads(row.results),
            member=row.member,
            generation=row.generation,
            parent_id=row.parent_id,
            exploited_from=row.exploited_from,
            error=row.error,
            lease_token=row.lease_token if with_token else None,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _job_row(self, connection: Connection, experiment_id: int, name: str, job_id: str) -> Any:
        row = _SQL_JOB.first(connection, {"id": job_id, "experiment_id": experiment_id})
        if row is None:
            raise NotFoundError(
                f"experiment {name!r} has no job {job_id!r}; "
                f"list its jobs with `schedy list {name!r}`."
            )
        return row

    def _insert_job(self, connection: Connection, values: dict[str, Any]) -> str:
        """Insert a job under a fresh random id.

        Ids have ~59 random bits, so a clash is astronomically rare; the
        unique index would turn one into an IntegrityError, retried by _run.
        """
        job_id = _new_job_id()
        row: dict[str, Any] = {
            "member": None,
            "generation": None,
            "parent_id": None,
            "exploited_from": None,
            "lease_token": None,
            "lease_expires_at": None,
        }
        row.update(values)
        row["id"] = job_id
        _SQL_INSERT_JOB.run(connection, row)
        return job_id

    # -- experiments -------------------------------------------------------
    def create_experiment(self, record: ExperimentRecord) -> None:
        config = _values.dumps(_values.normalize(record.config, "experiment config"))

        def body(connection: Connection) -> None:
            exists = connection.execute(
                sa.select(_experiments.c.id).where(_experiments.c.name == record.name)
            ).first()
            if exists is not None:
                raise ResourceExistsError(
                    f"an experiment named {record.name!r} already exists in {self._safe_url()}; "
                    "use db.get_experiment() to reuse it, or delete it first "
                    f"(`schedy rm {record.name!r}`)."
                )
            connection.execute(
                sa.insert(_experiments).values(
                    name=record.name,
                    kind=record.kind,
                    status=record.status,
                    config=config,
                    claims=0,
                    created_at=time.time(),
                )
            )

        try:
            self._run(body)
        except _IntegrityConflict:
            raise ResourceExistsError(
                f"an experiment named {record.name!r} already exists in {self._safe_url()}."
            ) from None

    def get_experiment(self, name: str) -> ExperimentRecord:
        return self._run(
            lambda c: self._experiment_record(self._experiment_row(c, name, False)),
            write=False,
            raw=True,
        )

    def list_experiments(self) -> list[ExperimentRecord]:
        def body(connection: Connection) -> list[ExperimentRecord]:
            rows = connection.execute(sa.select(_experiments).order_by(_experiments.c.id))
            return [self._experiment_record(row) for row in rows]

        return self._run(body, write=False)

    def update_experiment(self, name: str, status: str, config: dict[str, Any]) -> None:
        if status not in EXPERIMENT_STATUSES:
            raise ValueError(
                f"experiment status must be one of {EXPERIMENT_STATUSES}, not {status!r}"
            )
        text = _values.dumps(_values.normalize(config, "experiment config"))

        def body(connection: Connection) -> None:
            row = self._experiment_row(connection, name, True)
            connection.execute(
                sa.update(_experiments)
                .where(_experiments.c.id == row.id)
                .values(status=status, config=text)
            )

        self._run(body)

    def delete_experiment(self, name: str) -> None:
        def body(connection: Connection) -> None:
            row = self._experiment_row(connection, name, True)
            connection.execute(sa.delete(_jobs).where(_jobs.c.experiment_id == row.id))
            connection.execute(sa.delete(_members).where(_members.c.experiment_id == row.id))
            connection.execute(sa.delete(_experiments).where(_experiments.c.id == row.id))

        self._run(body)

    # -- jobs --------------------------------------------------------------
    def add_job(
        self,
        experiment: str,
        status: str,
        hyperparameters: dict[str, Any],
        results: dict[str, Any],
    ) -> JobRecord:
        if status not in JOB_STATUSES:
            raise ValueError(f"job status must be one of {', '.join(JOB_STATUSES)}, not {status!r}")
        hyperparameters = _values.normalize_mapping(hyperparameters, "hyperparameters")
        results = _values.normalize_mapping(results, "results")
        hp_text, results_text = _values.dumps(hyperparameters), _values.dumps(results)

        def body(connection: Connection) -> JobRecord:
            row = self._experiment_row(connection, experiment, True)
            self._experiment_object(row)._check_new_job(hyperparameters)
            now = time.time()
            job_id = self._insert_job(
                connection,
                dict(
                    experiment_id=row.id,
                    status=status,
                    hyperparameters=hp_text,
                    results=results_text,
                    created_at=now,
                    updated_at=now,
                ),
            )
            return JobRecord(
                id=job_id,
                experiment=experiment,
                status=status,
                hyperparameters=hyperparameters,
                results=results,
                created_at=now,
                updated_at=now,
            )

        return self._run(body, raw=True)

    def get_job(self, experiment: str, job_id: str) -> JobRecord:
        def body(connection: Connection) -> JobRecord:
            row = self._experiment_row(connection, experiment, False)
            return self._job_record(
                self._job_row(connection, row.id, experiment, job_id), experiment
            )

        return self._run(body, write=False, raw=True)

    def list_jobs(
        self, experiment: str, *, after: str | None = None, limit: int = 1000
    ) -> list[JobRecord]:
        def body(connection: Connection) -> list[JobRecord]:
            row = self._experiment_row(connection, experiment, False)
            query = sa.select(_jobs).where(_jobs.c.experiment_id == row.id)
            if after is not None:
                seq = connection.execute(
                    sa.select(_jobs.c.seq).where(_jobs.c.id == after)
                ).scalar_one_or_none()
                if seq is None:
                    raise NotFoundError(f"experiment {experiment!r} has no job {after!r}")
                query = query.where(_jobs.c.seq > seq)
            rows = connection.execute(query.order_by(_jobs.c.seq).limit(limit))
            return [self._job_record(job, experiment) for job in rows]

        return self._run(body, write=False)

    def update_job(
        self,
        experiment: str,
        job_id: str,
        update: JobUpdate,
        lease_token: str | None = None,
    ) -> JobRecord:
        if update.status is not None and update.status not in JOB_STATUSES:
            raise ValueError(
                f"job status must be one of {', '.join(JOB_STATUSES)}, not {update.status!r}"
            )
        # Normalize before the transaction: an unstorable value writes nothing.
        values: dict[str, Any] = {}
        hyperparameters = results = None
        if update.hyperparameters is not None:
            hyperparameters = _values.normalize_mapping(update.hyperparameters, "hyperparameters")
            values["hyperparameters"] = _values.dumps(hyperparameters)
        if update.results is not None:
            results = _values.normalize_mapping(update.results, "results")
            values["results"] = _values.dumps(results)
        if update.error is not None:
            values["error"] = update.error

        def body(connection: Connection) -> JobRecord:
            exp_row = self._experiment_row(connection, experiment, True)
            row = self._job_row(connection, exp_row.id, experiment, job_id)
            if lease_token is not None and (
                row.status != RUNNING or row.lease_token != lease_token
            ):
                raise UnsafeUpdateError(
                    f"job {job_id} of {experiment!r} is no longer yours: it is {row.status} "
                    f"({row.error or 'taken over by another writer'}). Its lease expired because "
                    "no heartbeat reached the store in time; another worker carries on its "
                    "population member. Nothing was written."
                )
            now = self._now(connection, exp_row)
            new_values = dict(values, updated_at=now)
            status = update.status or row.status
            new_values["status"] = status
            if status != RUNNING:
                new_values["lease_token"] = None
                new_values["lease_expires_at"] = None
            record = JobRecord(
                id=row.id,
                experiment=experiment,
                status=status,
                # Parse only what this update does not replace.
                hyperparameters=(
                    _values.loads(row.hyperparameters)
                    if hyperparameters is None
                    else hyperparameters
                ),
                results=_values.loads(row.results) if results is None else results,
                member=row.member,
                generation=row.generation,
                parent_id=row.parent_id,
                exploited_from=row.exploited_from,
                error=row.error if update.error is None else update.error,
                created_at=row.created_at,
                updated_at=now,
            )
            if status == DONE:
                new_values["score"] = self._experiment_object(exp_row)._score(record.results)
            _update(connection, "schedy_jobs", "seq = :key_seq", dict(new_values, key_seq=row.seq))
            if (
                row.member is not None
                and status != row.status
                and status in (DONE, CRASHED, PRUNED)
            ):
                self._job_ended(
                    connection,
                    exp_row,
                    (row.id, row.member, row.generation),
                    status,
                    record.results,
                    now,
                )
            return record

        return self._run(body, raw=True)

    def _job_ended(
        self,
        connection: Connection,
        exp_row: Any,
        job: tuple[str, int, int | None],
        status: str,
        results: dict[str, Any],
        now: float,
    ) -> None:
        """Fold a member's ended job ``(id, member, generation)`` into the
        population summary."""
        job_id, member, generation = job
        key = {"key_experiment_id": exp_row.id, "key_idx": member}
        member_row = _SQL_MEMBER.first(connection, {"experiment_id": exp_row.id, "idx": member})
        if member_row is None or member_row.busy_id != job_id:
            return  # a stale job of this member: the summary has moved on
        experiment = self._experiment_object(exp_row)
        changes: dict[str, Any] = {"busy_id": None, "ready_since": now}
        if status == DONE:
            score = experiment._score(results)
            changes.update(
                head_id=job_id,
                head_generation=generation,
                score=score,
                crashes=0,
                ended=experiment._is_final_generation(generation),
                history=_scores.extend(member_row.history, generation, score),
            )
        elif status == CRASHED:
            changes["crashes"] = member_row.crashes + 1
        else:  # PRUNED: abandoned on purpose
            changes["ended"] = True
        _update(
            connection,
            "schedy_members",
            "experiment_id = :key_experiment_id AND idx = :key_idx",
            dict(changes, **key),
        )

    def delete_job(self, experiment: str, job_id: str) -> None:
        def body(connection: Connection) -> None:
            exp_row = self._experiment_row(connection, experiment, True)
            row = self._job_row(connection, exp_row.id, experiment, job_id)
            connection.execute(sa.delete(_jobs).where(_jobs.c.seq == row.seq))
            if row.member is None:
                return
            member = _members.c
            where = (member.experiment_id == exp_row.id, member.idx == row.member)
            # A deleted job must not stay a member's resume point or busy marker.
            connection.execute(
                sa.update(_members).where(*where, member.busy_id == job_id).values(busy_id=None)
            )
            connection.execute(
                sa.update(_members)
                .where(*where, member.head_id == job_id)
                .values(head_id=None, head_generation=None, score=None)
            )
            connection.execute(
                sa.update(_members).where(*where, member.last_id == job_id).values(last_id=None)
            )

        self._run(body)

    # -- scheduling --------------------------------------------------------
    def claim_job(self, experiment: str, lease_seconds: float) -> Claim:
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        return self._run(
            lambda connection: self._claim(connection, experiment, lease_seconds), raw=True
        )

    def _claim(self, connection: Connection, name: str, lease_seconds: float) -> Claim:
        exp_row = self._experiment_row(connection, name, True)
        now = self._now(connection, exp_row)
        self._expire_leases(connection, exp_row, now)
        if exp_row.status == EXPERIMENT_DONE:
            return Claim(None, reason=f"experiment {name!r} is DONE")
        experiment = self._experiment_object(exp_row)
        by_experiment = {"experiment_id": exp_row.id}
        queued_row = _SQL_OLDEST_QUEUED.first(connection, by_experiment)
        members: list[MemberRecord] = _SQL_MEMBERS.rows(connection, by_experiment)

        # JSON text of the dicts decisions copy unchanged into a new job (a
        # continuation's hyperparameters, a copied member's results): written
        # back as is, not parsed, re-checked and re-encoded inside the lock —
        # results carrying a long per-epoch history would make that costly.
        loaded: list[JobRecord] = []  # keeps the dicts alive, so their ids stay unique
        stored_text: dict[int, str] = {}

        def load_job(job_id: str) -> JobRecord:
            row = self._job_row(connection, exp_row.id, name, job_id)
            record = self._job_record(row, name)
            loaded.append(record)
            stored_text[id(record.hyperparameters)] = row.hyperparameters
            stored_text[id(record.results)] = row.results
            return record

        state = SchedulingState(
            queued=None if queued_row is None else self._job_record(queued_row, name),
            members=members,
            load_job=load_job,
            rng=experiment._rng(exp_row.claims),
        )
        if experiment.seed is not None:
            _SQL_COUNT_CLAIM.run(connection, {"id": exp_row.id})
        decision: Decision = experiment._decide(state)
        # Retiring a hopeless member changes the state: decide again (bounded).
        for _ in range(len(members) + 1):
            if not isinstance(decision, EndMember):
                break
            logger.warning(
                "experiment %r retires member %d: %s", name, decision.member, decision.reason
            )
            self._end_member(connection, exp_row.id, decision.member)
            state.members[:] = [
                m._replace(ended=True) if m.index == decision.member else m for m in state.members
            ]
            decision = experiment._decide(state)
        return self._apply(
            connection, exp_row, name, decision, now, lease_seconds, members, stored_text
        )

    def _end_member(self, connection: Connection, experiment_id: int, index: int) -> None:
        _update(
            connection,
            "schedy_members",
            "experiment_id = :key_experiment_id AND idx = :key_idx",
            {"ended": True, "key_experiment_id": experiment_id, "key_idx": index},
        )

    def _expire_leases(self, connection: Connection, exp_row: Any, now: float) -> None:
        """Mark RUNNING jobs whose worker stopped heartbeating CRASHED."""
        expired = _SQL_EXPIRED.rows(connection, {"experiment_id": exp_row.id, "now": now})
        for row in expired:
            late = now - row.lease_expires_at
            values = {
                "status": CRASHED,
                "lease_token": None,
                "lease_expires_at": None,
                "updated_at": now,
                "error": f"lease expired {late:.1f}s ago: the worker stopped heartbeating "
                "(killed, hung or lost its machine)",
                "key_seq": row.seq,
            }
            _update(connection, "schedy_jobs", "seq = :key_seq", values)
            if row.member is not None:
                self._job_ended(
                    connection, exp_row, (row.id, row.member, row.generation), CRASHED, {}, now
                )

    def _apply(
        self,
        connection: Connection,
        exp_row: Any,
        name: str,
        decision: Decision,
        now: float,
        lease_seconds: float,
        members: list[MemberRecord],
        stored_text: dict[int, str],
    ) -> Claim:
        if isinstance(decision, Wait):
            return Claim(None, wait=True, reason=decision.reason)
        if isinstance(decision, Exhausted):
            if decision.finish:
                _update(
                    connection,
                    "schedy_experiments",
                    "id = :key_id",
                    {"status": EXPERIMENT_DONE, "key_id": exp_row.id},
                )
            return Claim(None, reason=decision.reason)
        lease: dict[str, Any] = {
            "lease_token": secrets.token_hex(16),
            "lease_expires_at": now + lease_seconds,
            "updated_at": now,
        }
        if isinstance(decision, TakeQueued):
            row = self._job_row(connection, exp_row.id, name, decision.job_id)
            _SQL_TAKE_QUEUED.run(
                connection,
                dict(
                    lease,
                    id=decision.job_id,
                    member=decision.member,
                    generation=decision.generation,
                ),
            )
            record = self._job_record(row, name)
            record.member, record.generation = decision.member, decision.generation
        elif isinstance(decision, CreateJob):
            hyperparameters, hyperparameters_text = _encoded(
                decision.hyperparameters, "hyperparameters", stored_text
            )
            results, results_text = _encoded(decision.results, "results", stored_text)
            job_id = self._insert_job(
                connection,
                dict(
                    lease,
                    experiment_id=exp_row.id,
                    status=RUNNING,
                    hyperparameters=hyperparameters_text,
                    results=results_text,
                    member=decision.member,
                    generation=decision.generation,
                    parent_id=decision.parent_id,
                    exploited_from=decision.exploited_from,
                    created_at=now,
                ),
            )
            record = JobRecord(
                id=job_id,
                experiment=name,
                status=RUNNING,
                hyperparameters=hyperparameters,
                results=results,
                member=decision.member,
                generation=decision.generation,
                parent_id=decision.parent_id,
                exploited_from=decision.exploited_from,
                created_at=now,
            )
        else:  # pragma: no cover - EndMember is resolved by the caller
            raise AssertionError(f"unexpected decision {decision!r}")
        record.status = RUNNING
        record.lease_token = lease["lease_token"]
        record.updated_at = now
        if record.member is not None:
            copied: str | bool | None = False
            if isinstance(decision, CreateJob) and decision.source_member is not None:
                source = [m for m in members if m.index == decision.source_member]
                copied = source[0].history if source else None
            self._mark_member_busy(connection, exp_row.id, record.member, record.id, copied)
        return Claim(record)

    def _mark_member_busy(
        self,
        connection: Connection,
        experiment_id: int,
        index: int,
        job_id: str,
        copied_history: str | bool | None = False,
    ) -> None:
        """Mark a member busy with ``job_id``; an exploit also takes its source's
        score history (``copied_history``, False when nothing was copied)."""
        params: dict[str, Any] = {"experiment_id": experiment_id, "idx": index, "job_id": job_id}
        if copied_history is not False:
            _SQL_MEMBER_BUSY_COPY.run(connection, dict(params, history=copied_history))
        elif not _SQL_MEMBER_BUSY.run(connection, params):
            _SQL_INSERT_MEMBER.run(connection, dict(params, ended=False))

    def renew_lease(
        self, experiment: str, job_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        def body(connection: Connection) -> bool:
            expires = self._now(connection) + lease_seconds
            params = {"id": job_id, "token": lease_token, "expires": expires}
            return bool(_SQL_RENEW.run(connection, params))

        return self._run(body, raw=True)

    def jobs_in_use(self, experiment: str, top_k: int) -> list[JobRecord]:
        def body(connection: Connection) -> list[JobRecord]:
            exp_row = self._experiment_row(connection, experiment, False)
            by_experiment = {"experiment_id": exp_row.id}
            found: dict[str, JobRecord] = {}
            rows = _SQL_ACTIVE_JOBS.rows(connection, by_experiment)
            if top_k > 0:
                rows += _SQL_TOP_JOBS.rows(connection, dict(by_experiment, limit=top_k))
            for row in rows:
                found[row.id] = self._job_record(row, experiment)
            return list(found.values())

        return self._run(body, write=False, raw=True)

    def top_jobs(self, experiment: str, k: int) -> list[JobRecord]:
        def body(connection: Connection) -> list[JobRecord]:
            exp_row = self._experiment_row(connection, experiment, False)
            rows = _SQL_TOP_JOBS.rows(connection, {"experiment_id": exp_row.id, "limit": k})
            return [self._job_record(row, experiment) for row in rows]

        return self._run(body, write=False, raw=True)

    def get_members(self, experiment: str) -> list[MemberRecord]:
        def body(connection: Connection) -> list[MemberRecord]:
            row = self._experiment_row(connection, experiment, False)
            rows = _SQL_MEMBERS.rows(connection, {"experiment_id": row.id})
            return [member._replace(ended=bool(member.ended)) for member in rows]

        return self._run(body, write=False, raw=True)
