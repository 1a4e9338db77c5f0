"""Shared fixtures: one ``store_url`` fixture parametrized over every backend.

PostgreSQL tests use a throw-away database on ``$SCHEDY_TEST_POSTGRES``
(default ``postgresql://postgres@127.0.0.1:5432/postgres`` as admin), MariaDB
(or MySQL) tests one on ``$SCHEDY_TEST_MARIADB`` (default
``mysql+pymysql://root@127.0.0.1:3306/test``); each skips with the reason
when its server cannot be reached, so the suite passes on a laptop.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import sqlalchemy as sa

    from schedy.storage._base import Storage

POSTGRES_ADMIN_URL = os.environ.get(
    "SCHEDY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN_URL = os.environ.get(
    "SCHEDY_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"
)

_postgres_state: dict[str, object] = {}
_mariadb_state: dict[str, object] = {}


def _scratch_database(
    state: dict[str, object],
    admin_url: str,
    label: str,
    driver: str,
    create: str,
    variable: str,
) -> str:
    """Create (once per session) a scratch database on a database server and return
    its URL, or skip saying why: ``create`` is the CREATE DATABASE statement for
    ``{name}``, ``driver`` the module it needs, ``variable`` the admin URL's override."""
    import importlib

    if "skip" in state:
        pytest.skip(str(state["skip"]))
    if "url" in state:
        return str(state["url"])
    try:
        importlib.import_module(driver)
        import sqlalchemy as sa
    except ImportError as error:
        state["skip"] = f"{label} tests need {driver}: {error}"
        pytest.skip(str(state["skip"]))
    name = f"schedy_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(create.format(name=name))
        admin.dispose()
    except Exception as error:  # unreachable server, bad credentials...
        state["skip"] = (
            f"{label} unreachable at {admin_url} ({type(error).__name__}); "
            f"set {variable} to an admin URL to run these tests"
        )
        pytest.skip(str(state["skip"]))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    state["url"] = url
    state["name"] = name
    return url


def _mariadb_database() -> str:
    """A scratch MariaDB database for this session (or skip)."""
    return _scratch_database(
        _mariadb_state,
        MARIADB_ADMIN_URL,
        "MariaDB",
        "pymysql",
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4",
        "SCHEDY_TEST_MARIADB",
    )


def _postgres_database() -> str:
    """A scratch PostgreSQL database for this session (or skip)."""
    return _scratch_database(
        _postgres_state,
        POSTGRES_ADMIN_URL,
        "PostgreSQL",
        "psycopg",
        'CREATE DATABASE "{name}"',
        "SCHEDY_TEST_POSTGRES",
    )


def _reset_database(url: str) -> None:
    """Drop schedy's tables, so each test starts from an empty store."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    cascade = " CASCADE" if url.startswith("postgresql") else ""
    with engine.begin() as connection:
        for table in (
            "schedy_tokens",
            "schedy_members",
            "schedy_jobs",
            "schedy_experiments",
            "schedy_meta",
        ):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}{cascade}")
    engine.dispose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import sqlalchemy as sa

    for state, admin_url, statement in (
        (_postgres_state, POSTGRES_ADMIN_URL, 'DROP DATABASE IF EXISTS "{}" WITH (FORCE)'),
        (_mariadb_state, MARIADB_ADMIN_URL, "DROP DATABASE IF EXISTS `{}`"),
    ):
        name = state.get("name")
        if not name:
            continue
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(statement.format(name))
        admin.dispose()


BACKENDS = ["sqlite", "postgresql", "mariadb", "http"]

#: The token of the schedy servers the tests start.
SERVER_TOKEN = "test-token-0123456789"


@contextmanager
def schedy_server(
    database: str | Storage, token: str | None = SERVER_TOKEN, port: int = 0
) -> Iterator[str]:
    """A ``schedy server`` on a free loopback port, in a thread, serving
    ``database`` (a URL, or a storage object to serve as it is); yields its
    URL and stops it afterwards."""
    pytest.importorskip("fastapi", reason="the HTTP backend needs: pip install 'schedy[server]'")
    import uvicorn

    from schedy.server import create_app
    from schedy.storage._sql import SQLStorage

    storage = SQLStorage(database) if isinstance(database, str) else database
    config = uvicorn.Config(
        create_app(storage, token), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="schedy-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # uvicorn offers a flag, not an event, for this
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test schedy server did not start")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        storage.close()


@pytest.fixture
def start_server() -> Callable[..., AbstractContextManager[str]]:
    """``start_server(database_url, port=0)``: a context manager around a server."""
    return schedy_server


@pytest.fixture
def server_token() -> str:
    return SERVER_TOKEN


@pytest.fixture
def server_url(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A schedy server over a fresh SQLite file; clients need ``server_token``."""
    with schedy_server(f"sqlite:///{tmp_path}/served.db") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def store_url(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh, empty store of each backend kind (the server's over SQLite)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/schedy.db"
    elif request.param == "postgresql":
        url = _postgres_database()
        _reset_database(url)
        yield url
    elif request.param == "mariadb":
        url = _mariadb_database()
        _reset_database(url)
        yield url
    else:
        monkeypatch.setenv("SCHEDY_TOKEN", SERVER_TOKEN)
        with schedy_server(f"sqlite:///{tmp_path}/served.db") as url:
            yield url


@pytest.fixture
def postgres_url() -> str:
    """A fresh PostgreSQL store, for what only a database server can do (or skip)."""
    url = _postgres_database()
    _reset_database(url)
    return url


@pytest.fixture
def mariadb_url() -> str:
    """A fresh MariaDB store (or skip)."""
    url = _mariadb_database()
    _reset_database(url)
    return url


@pytest.fixture
def postgres_admin() -> Iterator[sa.Engine]:
    """An autocommit engine on the PostgreSQL admin database (after ``postgres_url``)."""
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def mariadb_admin() -> Iterator[sa.Engine]:
    """An autocommit engine on the MariaDB admin database (after ``mariadb_url``)."""
    import sqlalchemy as sa

    engine = sa.create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{tmp_path}/schedy.db"


@pytest.fixture(autouse=True)
def _no_schedy_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their store explicitly; a developer's $SCHEDY_URL must not leak in."""
    monkeypatch.delenv("SCHEDY_URL", raising=False)
    monkeypatch.delenv("SCHEDY_TOKEN", raising=False)
