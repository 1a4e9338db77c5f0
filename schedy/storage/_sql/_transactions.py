"""Engines, connections and transactions: one transaction per storage call, retried.

:meth:`Database.run` runs a function in one transaction and is the single
place where driver errors become schedy errors: lock contention (SQLite
``database is locked``, PostgreSQL deadlocks and serialization failures,
InnoDB deadlocks and lock-wait timeouts) re-runs the whole transaction with
backoff, so contention never reaches the user; a connection found dead
before commit (a database restart, an idle timeout) is replaced and the
transaction re-run, since nothing was written; a connection lost *during*
COMMIT is reported, never re-run, because its outcome is unknown.

Serialization: every write locks the experiment's row first (``SELECT … FOR
UPDATE`` on PostgreSQL and MariaDB/MySQL; on SQLite every write transaction
is ``BEGIN IMMEDIATE``, which takes the database write lock up front instead
of failing on upgrade). Claims for one experiment are therefore strictly
ordered and no job can be handed out twice.

A SQLite store is a file that other programs can delete, replace or
truncate under an open store, and SQLite itself does not notice: it keeps
writing into the deleted inode, and every job reads back DONE while nothing
reaches the file at the path. So the file's identity (device, inode) is
recorded when the store first connects and compared with the path's (and
its size with 0, for a file truncated in place) once per transaction:
after a write's commit (a change that went into a deleted file is reported
lost, not done), before a read, and before a write that opens a new
connection (one ``os.stat``, 1-3 us, on a claim cycle of about
300 us). Once it differs every call is refused, reads included, and no
connection is opened that would create a new, empty file at the path.

Only an explicit create (``SchedyDB(url, create=True)``, which ``schedy add``
and ``schedy server`` pass) may initialise an existing file that is empty
or holds no schedy tables: a store truncated to 0 bytes, or a wrong path to
another program's database, is refused rather than silently made a new,
empty store. A path with no file at all is still created by any open.

A damaged file is not written to: once any operation meets SQLite's
"database disk image is malformed" (SQLITE_CORRUPT) or "file is not a
database" (SQLITE_NOTADB), every later write through this store is refused,
so the damage does not spread and no job is reported done into a file that
cannot be read back; reads are still attempted, to salvage what can be.
Opening a store checks the file's header, and runs ``PRAGMA quick_check``
on files up to :data:`QUICK_CHECK_MAX_BYTES` (about 2.5 ms per MiB), so a
new process finds the damage before its first write rather than after.
"""

from __future__ import annotations

import logging
import os
import shlex
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from ..._backoff import Backoff
from ...errors import StorageError
from ._statements import DB_CLOCK, Transaction, family

__all__ = ["Database"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Total time a transaction may keep retrying on lock contention.
CONTENTION_BUDGET_S = 300.0

#: Files up to this size get ``PRAGMA quick_check`` when a store opens them
#: (about 40 ms at this size; a bigger file is checked by its header only).
QUICK_CHECK_MAX_BYTES = 16 * 2**20

#: The first 16 bytes of every SQLite database file.
_SQLITE_HEADER = b"SQLite format 3\x00"

#: SQLite's primary result codes -> what they say about the store's file.
_SQLITE_KINDS = {
    3: "permission",  # SQLITE_PERM
    8: "readonly",  # SQLITE_READONLY
    10: "io",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "full",  # SQLITE_FULL
    14: "cantopen",  # SQLITE_CANTOPEN
    23: "permission",  # SQLITE_AUTH
    26: "corrupt",  # SQLITE_NOTADB
}
#: Extended codes that say more than their primary one.
_SQLITE_READONLY_DBMOVED, _SQLITE_READONLY_DIRECTORY = 1032, 1544
#: Without result codes (Python 3.10): SQLite's fixed messages.
_SQLITE_MESSAGES = (
    ("malformed", "corrupt"),
    ("file is not a database", "corrupt"),
    ("database or disk is full", "full"),
    ("attempt to write a readonly database", "readonly"),
    ("unable to open database file", "cantopen"),
    ("disk i/o error", "io"),
    ("access permission denied", "permission"),
)

#: How long an open waits for a 0-byte file just created by another opener
#: (SQLite creates it empty and writes its header an instant later).
EMPTY_FILE_GRACE_S = 0.5


class IntegrityConflict(StorageError):
    """A uniqueness clash; create_experiment turns it into ResourceExistsError."""


class CommitLost(StorageError):
    """The connection died during COMMIT: whether it took effect is unknown."""


class _ConnectionLost(Exception):
    """The database connection died before the transaction committed.

    Nothing was written (the server rolls back a transaction whose
    connection is gone), so ``run`` may run it again on a fresh connection:
    that is how a server restart or an idle-connection timeout stays
    invisible, without pinging before every transaction.
    """


def _file_path(database: str, uri: bool) -> str:
    """The absolute path of the file a SQLite URL's database part names.

    With ``?uri=true`` the database part is a ``file:`` URI whose query
    SQLAlchemy has already taken apart; its path is percent-decoded.
    """
    if uri and database.startswith("file:"):
        database = database[len("file:") :]
        if database.startswith("//"):
            database = database[2:]  # an empty authority: file:///abs/path
        database = urllib.parse.unquote(database.split("?", 1)[0])
    return os.path.abspath(database)


def sqlite_failure(error: BaseException | None) -> str | None:
    """What a SQLite error says about the store's file, or None for anything else.

    ``"corrupt"`` (SQLITE_CORRUPT, SQLITE_NOTADB), ``"full"`` (SQLITE_FULL),
    ``"readonly-folder"`` (a WAL store whose folder cannot hold its -wal and
    -shm files), ``"readonly"``, ``"moved"`` (SQLITE_READONLY_DBMOVED: the
    file was renamed or deleted), ``"cantopen"``, ``"permission"`` or ``"io"``.
    Read from the error's result code where Python gives it (3.11+), else
    from SQLite's fixed English message.
    """
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        if code == _SQLITE_READONLY_DIRECTORY:
            return "readonly-folder"
        if code == _SQLITE_READONLY_DBMOVED:
            return "moved"
        return _SQLITE_KINDS.get(code & 0xFF)
    text = str(error).lower()
    for words, kind in _SQLITE_MESSAGES:
        if words in text:
            return kind
    return None


def _user() -> str:
    """This process's user, for messages about permissions."""
    if not hasattr(os, "geteuid"):
        return "this user"
    try:
        import pwd

        return f"{pwd.getpwuid(os.geteuid()).pw_name}, uid {os.geteuid()}"
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _permissions(path: str) -> str:
    """``path``'s owner and mode, or its folder's when it does not exist."""
    target = path if os.path.exists(path) else os.path.dirname(path)
    try:
        stat = os.stat(target)
    except OSError as error:
        return f"{target}: {error.strerror}"
    return f"{target}: owner uid {stat.st_uid}, mode {stat.st_mode & 0o777:o}"


def is_contention(error: BaseException | None) -> bool:
    """Lock contention worth retrying, as opposed to a real failure."""
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if sqlstate in ("40001", "40P01", "55P03"):  # serialization, deadlock, lock not available
        return True
    args = getattr(error, "args", ())
    if args and args[0] in (1205, 1213):  # MySQL/MariaDB: lock wait timeout, deadlock
        return True
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


class Database:
    """One store's engine and transactions; ``dialect`` is SQLAlchemy's backend name."""

    def __init__(self, url: str, echo: bool, options: dict[str, Any], create: bool = False) -> None:
        self.url = url
        #: Whether an existing empty or non-schedy SQLite file may be initialised.
        self.create = create
        #: The SQLite file, absolute; None in memory and on database servers.
        self._path: str | None = None
        #: (st_dev, st_ino) of that file, once the first connection opened it.
        self._identity: tuple[int, int] | None = None
        #: Why every call is refused: the file went away under the open store.
        self._gone: str | None = None
        #: What damage the file was found with (the first met).
        self._damaged: str | None = None
        #: Why every write is refused: the file is damaged, or opened read-only.
        self._write_refusal: str | None = None
        #: Why the store was opened read-only: its URL says so, or its folder is.
        self._read_only: str | None = None
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as error:
            raise ValueError(f"invalid database URL {url!r}: {error}") from None
        self.dialect = parsed.get_backend_name()
        self.family = family(self.dialect)
        self.is_sqlite = self.family == "sqlite"
        self._local = threading.local()
        if self.is_sqlite:
            self.engine = self._sqlite_engine(parsed, echo, options)
        else:
            self.engine = self._server_engine(parsed, echo, options)
        dbapi = self.engine.dialect.dbapi
        self._dbapi = dbapi
        self._dbapi_error: type[Exception] = getattr(dbapi, "Error", SQLAlchemyError)
        self._dbapi_integrity_error: type[Exception] = getattr(
            dbapi, "IntegrityError", IntegrityError
        )
        if self._path is not None:
            try:
                self._inspect_at_open()
            except BaseException:
                self.close()
                raise
        if hasattr(os, "register_at_fork"):
            # A forked worker must not reuse the parent's connections.
            os.register_at_fork(after_in_child=self._after_fork)

    # -- engines -------------------------------------------------------------------
    def _server_engine(self, parsed: sa.URL, echo: bool, options: dict[str, Any]) -> Engine:
        # No pool_pre_ping: a ping is a round trip per transaction; a dead
        # connection is detected on first use and the transaction re-run.
        kwargs = dict(options)
        if self.family == "mysql":
            # READ COMMITTED as on PostgreSQL: a read after the row lock sees
            # the latest commit, not a snapshot from the transaction's start.
            kwargs.setdefault("isolation_level", "READ COMMITTED")
            connect_args = dict(kwargs.get("connect_args") or {})
            connect_args.setdefault("charset", "utf8mb4")
            kwargs["connect_args"] = connect_args
        try:
            engine = sa.create_engine(parsed, echo=echo, **kwargs)
        except ModuleNotFoundError as error:
            extra = "postgres" if self.family == "postgresql" else "mysql"
            raise StorageError(
                f"the driver for {parsed.drivername} is not installed ({error}); install it "
                f"with: pip install 'schedy[{extra}]'"
            ) from None
        if self.family == "mysql":

            @event.listens_for(engine, "connect")
            def _utc(dbapi_connection: Any, _record: Any) -> None:
                # UNIX_TIMESTAMP(SYSDATE()) reads local time back: in UTC no
                # daylight-saving hour is ambiguous.
                cursor = dbapi_connection.cursor()
                cursor.execute("SET time_zone = '+00:00'")
                cursor.close()

        return engine

    def _sqlite_engine(self, parsed: sa.URL, echo: bool, options: dict[str, Any]) -> Engine:
        database = parsed.database or ""
        uri = str(parsed.query.get("uri", "")).lower() in ("true", "1")
        in_memory = (
            database in ("", ":memory:")
            or database.startswith("file::memory:")
            or parsed.query.get("mode") == "memory"
        )
        if not in_memory:
            path = _file_path(database, uri)
            directory = os.path.dirname(path)
            if not os.path.isdir(directory):
                raise StorageError(
                    f"cannot open SQLite database {database!r}: folder {directory!r} does "
                    "not exist; create it or pick another path."
                )
            self._check_before_open(path)
            self._path = path
            if not uri:
                # Absolute, so that a chdir after opening cannot make a new
                # connection open (and create) another file.
                parsed = parsed.set(database=path)
        engine_kwargs: dict[str, Any] = {
            # Connections move between the worker and its heartbeat thread.
            "connect_args": {"check_same_thread": False, "timeout": 60},
        }
        if in_memory:
            engine_kwargs["poolclass"] = sa.pool.StaticPool
        elif parsed.query.get("mode") == "ro" or parsed.query.get("immutable") in ("1", "true"):
            self._read_only = "url"
        elif self._folder_is_read_only(parsed):
            # SQLite in WAL mode cannot even read a store whose folder cannot
            # hold its -wal and -shm files: open it as an unchanging file.
            self._read_only = "folder"
            target = f"file:{urllib.parse.quote(self._path or '')}?mode=ro&immutable=1"
            engine_kwargs["creator"] = lambda: sqlite3.connect(
                target, uri=True, check_same_thread=False, timeout=60
            )
        if self._read_only is not None:
            self._write_refusal = self._read_only_message()
        engine_kwargs.update(options)
        engine = sa.create_engine(parsed, echo=echo, **engine_kwargs)
        read_only = self._read_only is not None

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let us issue BEGIN ourselves (pysqlite would defer it and then
            # fail to upgrade a read lock under contention).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout = 60000")
            if not in_memory and not read_only:
                cursor.execute("PRAGMA journal_mode = WAL")
                # WAL + NORMAL: durable across process crashes, no fsync per commit.
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()
            if self._path is not None and self._identity is None:
                self._note_identity(self._path)

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            if connection.get_execution_options().get("schedy_read_only"):
                connection.exec_driver_sql("BEGIN")
            else:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _raw_connection(self) -> Any:
        """A DBAPI connection for one transaction.

        SQLite keeps one per thread, detached from the pool: opening a local
        file needs no pooling, and skipping check-out/check-in saves ~50 us
        per scheduling cycle. Other databases use the pool.
        """
        if not self.is_sqlite:
            return self.engine.raw_connection()
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self.engine.raw_connection()
            connection.detach()
            self._local.connection = connection
        return connection

    def _release_raw(self, connection: Any, broken: bool, lost: bool = False) -> None:
        if not self.is_sqlite:
            if lost:
                # Dead, and its idle siblings likely too (a server restart):
                # start a fresh pool rather than meet them one by one.
                connection.invalidate()
                self.engine.dispose(close=False)
            else:
                connection.close()
        elif broken:
            # A failed transaction may leave the connection unusable: start afresh.
            self._local.connection = None
            connection.close()

    def _after_fork(self) -> None:
        self._local = threading.local()
        self.engine.dispose(close=False)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.close()
        self.engine.dispose()

    # -- the file under a SQLite store -------------------------------------------------
    def _folder_is_read_only(self, parsed: sa.URL) -> bool:
        """Whether the store's file exists in a folder this process cannot write,
        with no -wal file beside it (no process has it open for writing, so
        reading it as an unchanging file sees every commit)."""
        path = self._path
        if path is None or parsed.get_driver_name() != "pysqlite":
            return False
        return (
            os.path.isfile(path)
            and not os.access(os.path.dirname(path), os.W_OK)
            and not os.path.exists(path + "-wal")
        )

    def _read_only_message(self) -> str:
        if self._read_only == "folder":
            return (
                f"the SQLite store {self._path} was opened read-only, because its folder "
                f"{os.path.dirname(self._path or '')} is read-only for this user ({_user()}): "
                "SQLite in WAL mode keeps -wal and -shm files beside the store to write it. "
                "Make the folder writable (or mount it read-write) to write to the store; "
                "nothing was written."
            )
        return (
            f"the SQLite store {self._path} was opened read-only (mode=ro or immutable in its "
            "URL): it can be read, not written; nothing was written."
        )

    def _sqlite_message(self, original: BaseException | None) -> str:
        """What a SQLite failure means for this store, and what to do about it.

        SQLite's own words ("unable to open database file") do not say which
        file, nor why; the folder and file are looked at to say it.
        """
        kind = sqlite_failure(original)
        path = self._path or self.safe_url()
        folder = os.path.dirname(path)
        if kind == "corrupt":
            return self._mark_damaged(f"SQLite: {original}")
        if kind == "moved":  # SQLite noticed it itself (rollback-journal mode)
            self._gone = self._gone_message(replaced=False)
            return f"{self._gone} This call wrote nothing."
        if kind == "full":
            return (
                f"the disk holding the SQLite store {path} is full (SQLite: {original}): free "
                f"space on it (df -h {shlex.quote(folder)}) and try again; nothing was written."
            )
        if kind == "readonly-folder" or (
            kind == "readonly" and self._read_only is None and not os.access(folder, os.W_OK)
        ):
            return (
                f"the folder {folder} of the SQLite store is read-only for this user "
                f"({_user()}): SQLite in WAL mode creates {os.path.basename(path)}-wal and "
                f"-shm files beside the store, even to read it. Make the folder writable (or "
                "mount it read-write), or copy the store into a writable folder; nothing was "
                "written."
            )
        if kind == "readonly":
            if self._read_only is not None:
                return self._read_only_message()
            if os.path.exists(path) and not os.access(path, os.W_OK):
                return (
                    f"the SQLite store {path} is read-only for this user ({_user()}; "
                    f"{_permissions(path)}): make it writable for this user (chmod, chown) "
                    "for schedy to write to it; nothing was written."
                )
            return (
                f"SQLite refused to write to {path} ({original}): the file, its -wal or "
                "-shm file beside it, or the filesystem is read-only; nothing was written."
            )
        if kind in ("cantopen", "permission"):
            if not os.path.isdir(folder):
                return (
                    f"cannot open the SQLite store {path}: its folder {folder} does not exist "
                    "(any more); nothing was written."
                )
            if not os.access(folder, os.X_OK) or (
                os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK)
            ):
                return (
                    f"permission denied: this user ({_user()}) may not read and write the "
                    f"SQLite store {path} ({_permissions(path)}). Give it access (chmod, chown), "
                    "or run as the store's owner; nothing was written."
                )
            if not os.path.exists(path) and not os.access(folder, os.W_OK):
                return (
                    f"cannot create the SQLite store {path}: its folder is read-only for this "
                    f"user ({_user()}); pick a writable folder. Nothing was written."
                )
            return (
                f"SQLite cannot open {path} or the -wal and -shm files beside it ({original}): "
                "check that the folder is writable, on a local filesystem (WAL needs shared "
                "memory, which some network filesystems lack), and that the process has file "
                "descriptors left. Nothing was written."
            )
        if kind == "io":
            return (
                f"an I/O error on the SQLite store {path} ({original}): the disk may be failing "
                "or full, a network filesystem may have gone away, or the file was changed "
                "under schedy. Nothing was written; check the disk, and the store with: sqlite3 "
                f"{shlex.quote(path)} 'PRAGMA integrity_check'."
            )
        return f"SQLite error on {path}: {original}; nothing was written."

    def _check_before_open(self, path: str) -> None:
        """Refuse, before SQLite touches it, a file that only ``create`` may initialise.

        SQLite would take a 0-byte file for a new database, write a fresh
        header into it and delete the write-ahead log beside it: the
        truncated store would read back as an empty one.
        """
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            if not self.create and os.path.exists(path + "-wal"):
                raise StorageError(
                    f"there is no SQLite store at {path}, but its write-ahead log {path}-wal "
                    "is still there: the store was deleted (or moved without its -wal file) "
                    "while a process had it open. Restore the file; to start a new, empty "
                    "store there instead, open it with SchedyDB(url, create=True) or "
                    "`schedy add`."
                ) from None
            return  # a new store: the first connection creates it
        except PermissionError:
            raise StorageError(
                f"permission denied: this user ({_user()}) may not reach the SQLite store "
                f"{path} ({_permissions(path)}). Give it access to the folder (chmod, chown), "
                "or run as the store's owner; nothing was written."
            ) from None
        if stat.st_size > 0:
            self._check_header(path)
            return
        if self.create:
            return
        # Another opener may have created it an instant ago: give it time to
        # write the header before calling the file an emptied store.
        deadline = time.time() + EMPTY_FILE_GRACE_S
        while stat.st_size == 0 and time.time() - stat.st_mtime < EMPTY_FILE_GRACE_S:
            if time.time() > deadline:
                break
            time.sleep(0.01)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                return
        if stat.st_size == 0:
            raise StorageError(
                f"the SQLite store {path} is empty (0 bytes): a store truncated or "
                "emptied by another program looks like that, so schedy will not start a new "
                "store in it. Restore the file from a backup; to make it a new, empty store, "
                "open it with SchedyDB(url, create=True) or `schedy add`."
            )

    def _check_header(self, path: str) -> None:
        """Refuse a file that does not start as every SQLite database does.

        Even with ``create``: SQLite cannot read it, and initialising it would
        overwrite what may be a damaged store or another program's file.
        """
        try:
            with open(path, "rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except OSError:
            return  # unreadable: SQLite's own error says why, classified by _retry
        if header != _SQLITE_HEADER:
            raise StorageError(
                f"{path} is not a SQLite database: it does not start with SQLite's header, "
                "so it is a damaged store or another kind of file, and schedy will neither "
                f"read nor write it. Check it with: sqlite3 {shlex.quote(path)} 'PRAGMA "
                "integrity_check' -- restore the store from a backup, or name the right file."
            )

    def _inspect_at_open(self) -> None:
        """Look at the opened file once: a SQLite database of another program
        (tables, none of them schedy's) is refused unless ``create``, and a
        file small enough to check quickly is checked for damage, so that its
        writes are refused from the start (it still opens, for its reads)."""
        path = self._path
        assert path is not None
        try:
            check = os.path.getsize(path) <= QUICK_CHECK_MAX_BYTES
        except OSError:
            check = False

        def tables(transaction: Transaction) -> list[str]:
            cursor = transaction.connection.cursor()
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
            return [str(row[0]) for row in cursor.fetchall()]

        def quick_check(transaction: Transaction) -> list[str]:
            cursor = transaction.connection.cursor()
            cursor.execute("PRAGMA quick_check(3)")
            return [str(row[0]) for row in cursor.fetchall()]

        names = self.run(tables, write=False)
        if names and "schedy_meta" not in names and not self.create:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise StorageError(
                f"{path} is a SQLite database without schedy's tables (it holds "
                f"{shown}): not a schedy store, or not the right path. Name the right store; "
                "to add schedy's tables to this database, open it with "
                "SchedyDB(url, create=True) or `schedy add`."
            )
        if not check:
            return
        try:
            problems = self.run(quick_check, write=False)
        except StorageError:
            if self._damaged is None:
                raise
        else:
            if problems != ["ok"]:
                self._mark_damaged("PRAGMA quick_check: " + "; ".join(problems))
        if self._damaged is not None:
            logger.warning("%s", self._damaged)

    def _note_identity(self, path: str) -> None:
        """Record which file the first connection opened (just opened, so it is there)."""
        try:
            stat = os.stat(path)
        except OSError:
            self._gone = self._gone_message(replaced=False)
            return
        self._identity = (stat.st_dev, stat.st_ino)

    def _check_file(self, committed: bool = False) -> None:
        """Refuse to go on when the file at the path is not the one this store opened.

        One ``os.stat``, once per transaction: after a write's commit (so a
        change that went into a file deleted meanwhile is reported lost, not
        done), and before a read or before a write that opens a connection
        (so no reconnecting thread creates a new, empty file at the path).
        """
        if self._gone is None:
            identity = self._identity
            if identity is None:
                return  # not connected yet: the first connection records it
            path = self._path
            assert path is not None
            try:
                stat = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                self._gone = self._gone_message(replaced=False)
            except OSError as error:
                raise StorageError(
                    f"cannot check the SQLite store {path} ({error}); nothing was written."
                ) from None
            else:
                if (stat.st_dev, stat.st_ino) == identity:
                    if stat.st_size > 0:
                        return
                    self._gone = self._emptied_message()  # truncated in place: same inode
                else:
                    self._gone = self._gone_message(replaced=True)
        if committed:
            raise StorageError(
                "this change was committed into a file that is no longer the store, so it is "
                f"lost: {self._gone}"
            )
        raise StorageError(f"{self._gone} This call wrote nothing.")

    def _gone_message(self, replaced: bool) -> str:
        """Why every call is refused from now on (SQLite itself would carry on)."""
        path = self._path
        if replaced:
            return (
                f"the SQLite store {path} was replaced by another file while this store was "
                "open (a copy, a restore, or another store moved over it). Every call on this "
                "store is now refused, so nothing more is written to either file: reopen the "
                "store (restart the worker) to use the file now at that path."
            )
        return (
            f"the SQLite store is no longer at {path}: the file or its folder was deleted, "
            "moved or renamed while this store was open. SQLite would go on writing into the "
            "deleted file, where no one can read it, so every call on this store is now "
            "refused and nothing more is written: restore the file, then reopen the store "
            "(restart the worker)."
        )

    def _emptied_message(self) -> str:
        return (
            f"the SQLite store {self._path} was emptied (truncated to 0 bytes) while this "
            "store was open: its jobs are gone from the file. Every call on this store is now "
            "refused, so nothing is written into what is left: restore the file from a backup, "
            "then reopen the store (restart the worker)."
        )

    def _mark_damaged(self, detail: str) -> str:
        """Refuse every later write, and say why (the first damage met is kept)."""
        if self._damaged is None:
            path = shlex.quote(self._path or self.safe_url())
            self._damaged = (
                f"the SQLite store {self._path} is damaged ({detail}). schedy writes nothing "
                "more to it, so the damage cannot spread and no result is reported stored "
                "that cannot be read back; reads are still attempted. Check it with: sqlite3 "
                f"{path} 'PRAGMA integrity_check' -- then restore it from a backup (what is "
                f"still readable can be salvaged with: sqlite3 {path} .recover | sqlite3 "
                "recovered.db)."
            )
            self._write_refusal = self._damaged
        return self._damaged

    # -- transactions ----------------------------------------------------------------
    @contextmanager
    def _raw_transaction(self, write: bool) -> Iterator[Transaction]:
        """One transaction on a bare DBAPI connection (raw statements only)."""
        dbapi_connection = self._raw_connection()
        try:
            if self.is_sqlite:
                dbapi_connection.cursor().execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Transaction(self.engine.dialect, dbapi_connection)
            except self._dbapi_error as error:
                if self._is_lost(error, dbapi_connection):
                    raise _ConnectionLost(error) from error
                raise
            self._commit(dbapi_connection.commit, dbapi_connection)
        except BaseException as error:
            lost = isinstance(error, (_ConnectionLost, CommitLost))
            try:
                if not lost:
                    dbapi_connection.rollback()
            finally:
                broken = lost or isinstance(error, (self._dbapi_error, SQLAlchemyError))
                self._release_raw(dbapi_connection, broken=broken, lost=lost)
            raise
        self._release_raw(dbapi_connection, broken=False)

    @contextmanager
    def _core_transaction(self, write: bool) -> Iterator[Connection]:
        """One transaction on an SQLAlchemy ``Connection`` (schema work)."""
        connection = self.engine.connect()
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
        dialect: Any = self.engine.dialect
        return bool(dialect.is_disconnect(error, dbapi_connection.dbapi_connection, None))

    def _commit(self, commit: Callable[[], None], dbapi_connection: Any) -> None:
        """Commit; a connection lost *while committing* leaves the outcome
        unknown, so that is reported, never silently re-run."""
        try:
            commit()
        except (SQLAlchemyError, self._dbapi_error) as error:
            original = error.orig if isinstance(error, DBAPIError) else error
            if self._is_lost(error, dbapi_connection):
                raise CommitLost(
                    f"lost the connection to {self.safe_url()} while committing: the last "
                    f"change may or may not have been stored ({original}). Check the job's "
                    "status (schedy list) before retrying."
                ) from error
            raise

    def run(self, body: Callable[[Transaction], T], write: bool = True) -> T:
        """Run ``body`` in one raw transaction, retrying it on lock contention."""
        return self._retry(body, write, core=False)

    def run_core(self, body: Callable[[Connection], T], write: bool = True) -> T:
        """:meth:`run` for schema work, on an SQLAlchemy ``Connection``."""
        return self._retry(body, write, core=True)

    def _retry(self, body: Callable[[Any], T], write: bool, core: bool) -> T:
        """Driver errors arrive either wrapped by SQLAlchemy (``DBAPIError``) or
        raw from the DBAPI cursor; both are handled here, once."""
        backoff: Backoff | None = None  # made on the first contention: most calls meet none
        reconnects = 0
        path = self._path
        while True:
            if path is not None:
                if self._gone is not None:
                    raise StorageError(f"{self._gone} This call wrote nothing.")
                if not write:
                    self._check_file()
                elif self._write_refusal is not None:
                    raise StorageError(self._write_refusal)
                elif core or getattr(self._local, "connection", None) is None:
                    self._check_file()  # a new connection would create a vacated path
            try:
                begin = self._core_transaction if core else self._raw_transaction
                with begin(write) as transaction:
                    result = body(transaction)
                if write and path is not None:
                    self._check_file(committed=True)
                return result
            except _ConnectionLost as lost:
                # Nothing was written: re-run on a fresh connection (a pooled
                # one that died idle); losing it again and again is an outage.
                reconnects += 1
                if reconnects <= 2:
                    continue
                raise StorageError(
                    f"lost the connection to {self.safe_url()} ({lost.__cause__}). Check "
                    "that the database is running and reachable; nothing was written."
                ) from lost.__cause__
            except (SQLAlchemyError, self._dbapi_error) as error:
                original = error.orig if isinstance(error, DBAPIError) else error
                if not isinstance(error, SQLAlchemyError) or isinstance(error, DBAPIError):
                    if backoff is None:
                        backoff = Backoff(0.002, 0.25, budget=CONTENTION_BUDGET_S, jitter=0.5)
                    if is_contention(original):
                        if backoff.wait():
                            continue
                        raise StorageError(
                            f"{self.safe_url()} stayed locked for {CONTENTION_BUDGET_S:.0f}s; "
                            "another process holds a long transaction. Nothing was written."
                        ) from error
                    if isinstance(error, IntegrityError) or isinstance(
                        original, self._dbapi_integrity_error
                    ):
                        if "schedy_jobs" in str(original) and (backoff.remaining() or 1) > 0:
                            continue  # a job id clash: draw another id
                        raise IntegrityConflict(str(original)) from error
                if "no such column" in str(original) or "no such table" in str(original):
                    raise StorageError(
                        f"{self.safe_url()} does not have the tables this schedy expects "
                        f"({original}): it was probably written by a development version of "
                        "schedy. Use a new store file, or export and re-create the experiments."
                    ) from error
                if self.is_sqlite:
                    raise StorageError(self._sqlite_message(original)) from error
                raise StorageError(self._server_message(original)) from error

    def _server_message(self, original: BaseException | None) -> str:
        """What a database server's refusal means, by its PEP 249 class: only a
        connection-level failure sends the user to check the server and URL."""
        url, text = self.safe_url(), str(original).strip().splitlines()[0] if original else ""
        dbapi = self._dbapi

        def kind(name: str) -> bool:
            cls = getattr(dbapi, name, None)
            return isinstance(cls, type) and isinstance(original, cls)

        lowered = text.lower()
        if (
            "permission denied" in lowered
            or "access denied" in lowered
            or "command denied" in lowered
        ):
            user = sa.engine.make_url(self.url).username or "this user"
            return (
                f"the database user {user!r} may not do this on {url} ({text}): GRANT it "
                "SELECT, INSERT, UPDATE and DELETE on the schedy_* tables (and CREATE on the "
                "schema, for the first use); nothing was written."
            )
        if kind("ProgrammingError") and (
            "does not exist" in lowered or "doesn't exist" in lowered or "unknown column" in lowered
        ):
            return (
                f"{url} does not have the tables this schedy expects ({text}): they were "
                "changed or dropped by hand or by another program. Restore them from a "
                "backup, or use a new database; nothing was written."
            )
        if kind("DataError"):
            return (
                f"the database at {url} refused a value ({text}); nothing was written. "
                "Values reach it through schedy's checks, so please report this as a bug."
            )
        if kind("OperationalError") or kind("InterfaceError"):
            return (
                f"database error on {url}: {text}. Check that the database is running and "
                "the URL is right; nothing was written."
            )
        return f"the database at {url} refused the call ({text}); nothing was written."

    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except SQLAlchemyError:
            return "the database"

    def now(self, transaction: Transaction, exp_row: Any = None) -> float:
        """Lease clock: a database server's own, so machines can disagree; taken
        from ``exp_row`` when this transaction just read one."""
        if self.is_sqlite:
            return time.time()
        if exp_row is not None and exp_row.clock is not None:
            return float(exp_row.clock)
        return float(DB_CLOCK[self.family].first(transaction, {})[0])
