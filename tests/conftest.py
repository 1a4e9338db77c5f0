"""Shared fixtures: one ``store_url`` fixture parametrized over every backend.

PostgreSQL tests use a throw-away database on ``$SCHEDY_TEST_POSTGRES``
(default ``postgresql://postgres@127.0.0.1:5432/postgres`` as admin) and skip
with the reason when it cannot be reached, so the suite passes on a laptop.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import sqlalchemy as sa

POSTGRES_ADMIN_URL = os.environ.get(
    "SCHEDY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

_postgres_state: dict[str, object] = {}


def _postgres_database() -> str:
    """Create (once per session) a scratch database and return its URL, or skip."""
    if "skip" in _postgres_state:
        pytest.skip(str(_postgres_state["skip"]))
    if "url" in _postgres_state:
        return str(_postgres_state["url"])
    try:
        import psycopg  # noqa: F401
        import sqlalchemy as sa
    except ImportError as error:
        _postgres_state["skip"] = f"PostgreSQL tests need psycopg: {error}"
        pytest.skip(str(_postgres_state["skip"]))
    name = f"schedy_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
    except Exception as error:  # unreachable server, bad credentials...
        _postgres_state["skip"] = (
            f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL} ({type(error).__name__}); "
            "set SCHEDY_TEST_POSTGRES to an admin URL to run these tests"
        )
        pytest.skip(str(_postgres_state["skip"]))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    _postgres_state["url"] = url
    _postgres_state["name"] = name
    return url


def _reset_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for table in ("schedy_members", "schedy_jobs", "schedy_experiments", "schedy_meta"):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    engine.dispose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    name = _postgres_state.get("name")
    if not name:
        return
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A fresh, empty store of each backend kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/schedy.db"
    else:
        url = _postgres_database()
        _reset_postgres(url)
        yield url


@pytest.fixture
def postgres_url() -> str:
    """A fresh PostgreSQL store, for what only a database server can do (or skip)."""
    url = _postgres_database()
    _reset_postgres(url)
    return url


@pytest.fixture
def postgres_admin() -> Iterator[sa.Engine]:
    """An autocommit engine on the PostgreSQL admin database (after ``postgres_url``)."""
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{tmp_path}/schedy.db"


@pytest.fixture(autouse=True)
def _no_schedy_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their store explicitly; a developer's $SCHEDY_URL must not leak in."""
    monkeypatch.delenv("SCHEDY_URL", raising=False)
