"""SQLite must not lose data silently: each way a store file was seen to lose
jobs, reproduced on a real file, and the loud refusal that replaces it.

1. The file (or its folder) deleted or replaced under an open store: SQLite
   would keep writing into the unlinked inode, reporting every job DONE.
2. A file truncated to 0 bytes, or a SQLite file without schedy's tables,
   silently initialised by a plain ``SchedyDB(url)``.
3. A damaged file ("database disk image is malformed") still written to.
4. Error messages that say what happened (read-only, disk full, permission
   denied, damaged) instead of a database server's "is it running?".
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import schedy
from schedy.errors import StorageError


def _store(path: Path, jobs: int = 5) -> tuple[schedy.SchedyDB, schedy.Experiment]:
    """A store at ``path`` with a manual experiment ``m`` holding ``jobs`` queued jobs."""
    db = schedy.SchedyDB(f"sqlite:///{path}")
    db.add_experiment(schedy.ManualSearch("m"))
    experiment = db.get_experiment("m")
    for index in range(jobs):
        experiment.add_job({"i": index})
    return db, experiment


def _cycle(experiment: schedy.Experiment) -> str:
    """Claim a job and finish it DONE, as a worker does."""
    with experiment.next_job() as job:
        job.results["r"] = 1
    return job.id


# -- 1. the file deleted or replaced under an open store ---------------------------
def test_deleted_store_file_fails_loudly_and_keeps_refusing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db, experiment = _store(path)
    _cycle(experiment)
    os.remove(path)
    with pytest.raises(StorageError, match=r"no longer at .*deleted.*nothing more is written"):
        _cycle(experiment)
    # Every later call is refused too, reads included, and no new empty file
    # is left at the path by a reconnecting thread.
    with pytest.raises(StorageError, match=r"no longer at.*wrote nothing"):
        list(experiment.all_jobs())
    with pytest.raises(StorageError, match=r"no longer at.*wrote nothing"):
        experiment.add_job({"i": 99})
    refusals: list[BaseException] = []

    def from_another_thread() -> None:
        try:
            experiment.add_job({"i": 100})
        except StorageError as error:
            refusals.append(error)

    thread = threading.Thread(target=from_another_thread)
    thread.start()
    thread.join()
    assert len(refusals) == 1
    assert not path.exists()
    db.close()


def test_a_thread_connecting_after_the_deletion_creates_no_file(tmp_path: Path) -> None:
    # A new thread opens its own connection, which would create a new, empty
    # file at the vacated path: its first write is refused before that.
    path = tmp_path / "s.db"
    db, experiment = _store(path)
    os.remove(path)
    outcome: list[BaseException] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_raised(lambda: experiment.add_job({"i": 9})))
    )
    thread.start()
    thread.join()
    assert isinstance(outcome[0], StorageError) and "wrote nothing" in str(outcome[0])
    assert not path.exists()
    db.close()


def _raised(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except BaseException as error:
        return error
    raise AssertionError("no error")


def test_file_deleted_while_a_job_runs_fails_the_job_end(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db, experiment = _store(path)
    with pytest.raises(StorageError, match="no longer at"), experiment.next_job() as job:
        os.remove(path)
        job.results["r"] = 1
    assert not path.exists()
    db.close()


def test_replaced_store_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db, experiment = _store(path)
    other, _ = _store(tmp_path / "other.db", jobs=1)
    other.close()
    os.replace(tmp_path / "other.db", path)
    with pytest.raises(StorageError, match=r"replaced"):
        _cycle(experiment)
    with pytest.raises(StorageError, match=r"replaced"):
        db.get_experiments()
    db.close()


def test_a_store_truncated_while_open_is_refused(tmp_path: Path) -> None:
    # Truncated in place (`> s.db`): the same inode, so only its size tells.
    path = tmp_path / "s.db"
    db, experiment = _store(path)
    _cycle(experiment)
    os.truncate(path, 0)
    with pytest.raises(StorageError, match=r"emptied \(truncated to 0 bytes\)"):
        _cycle(experiment)
    with pytest.raises(StorageError, match="emptied"):
        db.get_experiments()
    assert path.stat().st_size == 0
    db.close()


def test_deleted_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    db, experiment = _store(folder / "s.db")
    _cycle(experiment)
    shutil.rmtree(folder)
    with pytest.raises(StorageError, match="no longer at"):
        _cycle(experiment)
    assert not folder.exists()
    db.close()


def test_a_commit_into_a_file_deleted_meanwhile_is_reported_lost(tmp_path: Path) -> None:
    # The file vanishes *during* a write transaction: its commit went to the
    # unlinked inode, and the caller is told so rather than told it worked.
    path = tmp_path / "s.db"
    db, _experiment = _store(path)
    database = db._storage._db  # type: ignore[attr-defined]

    def body(transaction: object) -> None:
        cursor = transaction.connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("UPDATE schedy_experiments SET claims = claims + 1")
        os.remove(path)

    with pytest.raises(StorageError, match=r"lost"):
        database.run(body)
    db.close()


def test_issue_scenario_no_job_reported_done_after_deletion(tmp_path: Path) -> None:
    # The reported loss: 187 jobs DONE with 0 errors after the file was gone.
    path = tmp_path / "s.db"
    db, experiment = _store(path, jobs=30)
    done, errors = 0, 0
    for index in range(30):
        if index == 10:
            os.remove(path)
        try:
            _cycle(experiment)
            done += 1
        except StorageError:
            errors += 1
    assert (done, errors) == (10, 20)
    db.close()


# -- 2. an emptied file, or a SQLite file without schedy's tables ------------------
def test_truncated_store_is_refused_by_a_plain_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db, _experiment = _store(path, jobs=300)
    db.close()
    os.truncate(path, 0)
    with pytest.raises(StorageError, match=r"empty \(0 bytes\).*create=True"):
        schedy.SchedyDB(f"sqlite:///{path}")
    assert path.stat().st_size == 0  # refused without touching it
    with pytest.raises(StorageError, match="empty"):
        schedy.SchedyDB(str(path))  # a bare path alike
    # Only an explicit create initialises it.
    with schedy.SchedyDB(f"sqlite:///{path}", create=True) as fresh:
        assert fresh.get_experiments() == []


def test_cli_refuses_a_truncated_store_and_add_initialises_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from schedy.cli import main

    path = tmp_path / "s.db"
    db, _experiment = _store(path, jobs=300)
    db.close()
    path.write_bytes(b"")
    assert main(["--db", f"sqlite:///{path}", "list"]) != 0
    assert "empty (0 bytes)" in capsys.readouterr().err
    assert main(["--db", f"sqlite:///{path}", "add", "fresh", "manual"]) == 0
    assert main(["--db", f"sqlite:///{path}", "list"]) == 0
    assert "fresh" in capsys.readouterr().out


def test_sqlite_file_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE notes (text TEXT)")
    connection.execute("INSERT INTO notes VALUES ('keep me')")
    connection.commit()
    connection.close()
    with pytest.raises(StorageError, match=r"without schedy's tables.*notes.*create=True"):
        schedy.SchedyDB(f"sqlite:///{path}")
    with schedy.SchedyDB(f"sqlite:///{path}", create=True) as db:
        db.add_experiment(schedy.ManualSearch("m"))
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT text FROM notes").fetchall() == [("keep me",)]
    connection.close()


def test_a_missing_file_is_still_created_by_a_plain_open(tmp_path: Path) -> None:
    # Not data loss, and the quickstart relies on it: SchedyDB() then add_experiment.
    path = tmp_path / "new.db"
    with schedy.SchedyDB(f"sqlite:///{path}") as db:
        db.add_experiment(schedy.ManualSearch("m"))
    assert path.stat().st_size > 0
    with schedy.SchedyDB(f"sqlite:///{path}") as db:  # and reopened as a store
        assert [experiment.name for experiment in db.get_experiments()] == ["m"]


def test_a_missing_file_with_its_write_ahead_log_left_is_refused(tmp_path: Path) -> None:
    # The file was deleted while a process had it open: its -wal is left
    # behind. A plain open must not start an empty store there (SQLite would
    # also delete that log).
    path = tmp_path / "s.db"
    db, experiment = _store(path)
    _cycle(experiment)
    os.remove(path)
    assert (tmp_path / "s.db-wal").exists()
    with pytest.raises(StorageError, match=r"-wal.*deleted"):
        schedy.SchedyDB(f"sqlite:///{path}")
    assert not path.exists()
    db.close()


def test_concurrent_first_opens_of_a_new_file_all_succeed(tmp_path: Path) -> None:
    # A worker that just created the file leaves it 0 bytes for an instant;
    # a second opener must wait for it, not call it an emptied store.
    path = tmp_path / "new.db"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            schedy.SchedyDB(f"sqlite:///{path}").close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- 3. a damaged file -----------------------------------------------------------
def _damaged_store(path: Path) -> None:
    """A store of 300 jobs, closed (its log folded into the file), then one page
    in the middle of the file overwritten, as a failing disk or a stray write
    does: the first such page that holds jobs (reading them all fails)."""
    db, _experiment = _store(path, jobs=300)
    db.close()
    assert not Path(f"{path}-wal").exists()
    pages = path.stat().st_size // 4096
    garbage = random.Random(0).randbytes(4096)
    for page in range(pages // 2, pages):
        with open(path, "r+b") as file:
            file.seek(page * 4096)
            original = file.read(4096)
            file.seek(page * 4096)
            file.write(garbage)
        connection = sqlite3.connect(path)
        try:
            connection.execute("SELECT hyperparameters FROM schedy_jobs").fetchall()
        except sqlite3.DatabaseError:
            return
        finally:
            connection.close()
        with open(path, "r+b") as file:
            file.seek(page * 4096)
            file.write(original)
    raise AssertionError("no page of jobs found to damage")


def test_a_damaged_store_is_found_at_open_and_never_written(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _damaged_store(path)
    before = path.read_bytes()
    with schedy.SchedyDB(f"sqlite:///{path}") as db:  # opens, for what can still be read
        experiment = db.get_experiment("m")
        assert [exp.name for exp in db.get_experiments()] == ["m"]
        damaged = r"damaged.*PRAGMA integrity_check.*backup"
        with pytest.raises(StorageError, match=damaged):
            experiment.add_job({"i": 1000})
        with pytest.raises(StorageError, match=damaged):
            _cycle(experiment)
    assert path.read_bytes() == before


def test_damage_met_by_a_read_stops_every_later_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file too big to check at open: the damage is met by the first read
    # that touches the bad page, and from then on nothing is written.
    from schedy.storage._sql import _transactions

    monkeypatch.setattr(_transactions, "QUICK_CHECK_MAX_BYTES", 0)
    path = tmp_path / "s.db"
    _damaged_store(path)
    with schedy.SchedyDB(f"sqlite:///{path}") as db:
        experiment = db.get_experiment("m")
        damaged = r"damaged.*PRAGMA integrity_check.*backup"
        experiment.add_job({"i": 1000})  # not known yet: the bad page is not on this path
        with pytest.raises(StorageError, match=damaged), experiment.next_job() as job:
            with pytest.raises(StorageError, match=damaged) as caught:
                list(experiment.all_jobs())  # meets the bad page
            assert "database is running" not in str(caught.value)  # no server here
            job.results["r"] = 1  # ... and its end is not written either
        with pytest.raises(StorageError, match=damaged):
            experiment.add_job({"i": 1001})
        assert [exp.name for exp in db.get_experiments()] == ["m"]  # reads still tried


def test_a_file_whose_header_is_damaged_is_refused_even_with_create(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db, _experiment = _store(path)
    db.close()
    with open(path, "r+b") as file:
        file.write(b"\x00" * 100)
    for create in (False, True):
        with pytest.raises(StorageError, match=r"not a SQLite database.*backup"):
            schedy.SchedyDB(f"sqlite:///{path}", create=create)


# -- 4. messages that say what happened --------------------------------------------
def test_a_full_disk_is_called_so_and_passes(tmp_path: Path) -> None:
    # SQLite's own page limit raises the very error a full disk does (SQLITE_FULL).
    path = tmp_path / "s.db"
    db, experiment = _store(path)
    cursor = db._storage._db._raw_connection().cursor()  # type: ignore[attr-defined]
    pages = cursor.execute("PRAGMA page_count").fetchone()[0]
    cursor.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(StorageError, match=r"disk holding .* is full.*df -h") as caught:
        for index in range(100):
            experiment.add_job({"i": index, "blob": "x" * 20000})
    assert "running" not in str(caught.value)
    experiment.add_job({"i": "after"})  # space is back (a new connection): no lasting refusal
    db.close()


def test_a_store_opened_read_only_says_so_on_write(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db, _experiment = _store(path)
    db.close()
    with schedy.SchedyDB(f"sqlite:///file:{path}?mode=ro&uri=true") as read_only:
        experiment = read_only.get_experiment("m")
        assert len(list(experiment.all_jobs())) == 5  # reads work
        with pytest.raises(StorageError, match=r"read-only.*mode=ro") as caught:
            experiment.add_job({"i": 5})
        assert "running" not in str(caught.value)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: sqlite3.OperationalError("database or disk is full"), "full"),
        (lambda: sqlite3.DatabaseError("database disk image is malformed"), "corrupt"),
        (lambda: sqlite3.DatabaseError("file is not a database"), "corrupt"),
        (lambda: sqlite3.OperationalError("attempt to write a readonly database"), "readonly"),
        (lambda: sqlite3.OperationalError("unable to open database file"), "cantopen"),
        (lambda: sqlite3.OperationalError("disk I/O error"), "io"),
        (lambda: sqlite3.OperationalError("no such table: x"), None),
    ],
)
def test_sqlite_errors_are_classified_by_their_message(
    make: Callable[[], Exception], kind: str | None
) -> None:
    # Python 3.10 gives no result code: SQLite's fixed messages are read instead.
    from schedy.storage._sql._transactions import sqlite_failure

    assert sqlite_failure(make()) == kind


def test_real_sqlite_errors_are_classified_by_their_result_code(tmp_path: Path) -> None:
    from schedy.storage._sql._transactions import sqlite_failure

    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (a)").connection.commit()
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as caught:
        read_only.execute("INSERT INTO t VALUES (1)")
    assert sqlite_failure(caught.value) == "readonly"
    with pytest.raises(sqlite3.OperationalError) as caught:
        sqlite3.connect(tmp_path / "no" / "such.db")
    assert sqlite_failure(caught.value) == "cantopen"


# What needs an unprivileged user: root passes every permission check, so
# as root these run in a forked child that became 'nobody'.
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder an unprivileged child can reach (tmp_path's parents are private)."""
    folder = Path(tempfile.mkdtemp(prefix="schedy-perm-"))
    folder.chmod(0o755)
    yield folder
    folder.chmod(0o755)
    shutil.rmtree(folder)


def _unprivileged(action: Callable[[], str]) -> str:
    """``action()``, or the error it raised as 'Type: message', run as a user
    that file permissions apply to: this one, or 'nobody' in a child if root."""

    def attempt() -> str:
        try:
            return action()
        except Exception as error:
            return f"{type(error).__name__}: {error}"

    if os.geteuid() != 0:
        return attempt()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(reader)
            os.setgid(65534)
            os.setuid(65534)
            outcome = attempt()
        except BaseException as error:
            outcome = f"SKIP: cannot become nobody ({error})"
        os.write(writer, outcome.encode())
        os._exit(0)
    os.close(writer)
    chunks = []
    while chunk := os.read(reader, 65536):
        chunks.append(chunk)
    os.close(reader)
    os.waitpid(pid, 0)
    outcome = b"".join(chunks).decode()
    if outcome.startswith("SKIP: "):
        pytest.skip(outcome[len("SKIP: ") :])
    return outcome


def _closed_store(folder: Path) -> Path:
    path = folder / "s.db"
    db, _experiment = _store(path)
    db.close()  # its -wal and -shm are gone with the last connection
    path.chmod(0o644)
    return path


@needs_fork
def test_a_read_only_folder_still_reads_and_says_why_it_cannot_write(open_folder: Path) -> None:
    path = _closed_store(open_folder)
    open_folder.chmod(0o555)

    def read_then_write() -> str:
        with schedy.SchedyDB(f"sqlite:///{path}") as db:
            experiment = db.get_experiment("m")
            count = len(list(experiment.all_jobs()))
            try:
                experiment.add_job({"i": 5})
            except StorageError as error:
                return f"read {count}; {error}"
            return f"read {count}; wrote"

    outcome = _unprivileged(read_then_write)
    assert outcome.startswith("read 5; "), outcome
    assert "folder" in outcome and "read-only" in outcome and "-wal" in outcome, outcome


@needs_fork
def test_a_read_only_folder_is_named_by_the_real_error(open_folder: Path) -> None:
    # The bare SQLite error a WAL store gives even to a reader in such a folder.
    from schedy.storage._sql._transactions import sqlite_failure

    path = _closed_store(open_folder)
    open_folder.chmod(0o555)

    def read() -> str:
        try:
            sqlite3.connect(path).execute("SELECT * FROM schedy_jobs").fetchall()
        except sqlite3.Error as error:
            return str(sqlite_failure(error))
        return "read"

    assert _unprivileged(read) in ("readonly-folder", "readonly")


@needs_fork
def test_a_read_only_file_says_so_on_write(open_folder: Path) -> None:
    path = _closed_store(open_folder)
    open_folder.chmod(0o777)  # the folder is writable, the file is not

    def write() -> str:
        with schedy.SchedyDB(f"sqlite:///{path}") as db:
            db.get_experiment("m").add_job({"i": 5})
        return "wrote"

    outcome = _unprivileged(write)
    assert "StorageError" in outcome and "read-only for this user" in outcome, outcome
    assert "running" not in outcome, outcome


@needs_fork
def test_an_unreadable_store_is_permission_denied(open_folder: Path) -> None:
    path = _closed_store(open_folder)
    path.chmod(0o600)

    def read() -> str:
        with schedy.SchedyDB(f"sqlite:///{path}") as db:
            return str(len(db.get_experiments()))

    outcome = _unprivileged(read)
    assert "StorageError" in outcome and "permission denied" in outcome, outcome
    assert "running" not in outcome, outcome


@needs_fork
def test_a_folder_that_cannot_be_entered_is_permission_denied(open_folder: Path) -> None:
    private = open_folder / "private"
    private.mkdir(mode=0o700)

    def open_it() -> str:
        schedy.SchedyDB(f"sqlite:///{private}/s.db").close()
        return "opened"

    outcome = _unprivileged(open_it)
    assert "StorageError" in outcome and "permission denied" in outcome, outcome


def test_other_sqlite_errors_do_not_ask_whether_a_server_runs() -> None:
    # "Is it running?" is the right question for PostgreSQL, never for a file.
    from schedy.storage._sql._transactions import Database

    database = Database("sqlite://", False, {})
    with pytest.raises(StorageError) as caught:
        database.run(lambda transaction: transaction.connection.cursor().execute("SELEC 1"))
    assert "SQLite error" in str(caught.value) and "running" not in str(caught.value)
    database.close()
