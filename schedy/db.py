"""SchedyDB: the handle on a store, whose URL picks the storage backend."""

from __future__ import annotations

import os
from typing import Any

from ._records import check_lease_seconds
from .experiments import Experiment, _experiment_from_record
from .storage._base import Storage

__all__ = ["DEFAULT_URL", "SchedyDB"]

#: The embedded default: a SQLite file in the current folder.
DEFAULT_URL = "sqlite:///./schedy.db"

_SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")


def _lease_from_environment() -> float:
    text = os.environ.get("SCHEDY_LEASE_SECONDS")
    if not text:
        return 60.0
    return check_lease_seconds(text if text.strip() else None, "$SCHEDY_LEASE_SECONDS")


def _resolve_url(url: str | None) -> str:
    """The URL a ``SchedyDB(url)`` opens: the argument, else $SCHEDY_URL, else the default."""
    return url if url is not None else os.environ.get("SCHEDY_URL") or DEFAULT_URL


def _scheme(url: str) -> str:
    """The backend a URL names: ``sqlite``, ``postgresql``, ``http``…; ``""`` for a bare path."""
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def _sqlite_file(url: str) -> str | None:
    """The file a SQLite URL (or bare path) names; None for in-memory and other backends.

    The CLI uses it to refuse to *create* a store on a read command, where a
    typo in --db would otherwise leave an empty database behind.
    """
    scheme = _scheme(url)
    if scheme == "":
        return url
    if scheme != "sqlite":
        return None
    database = url.split("://", 1)[1]
    database = database[1:] if database.startswith("/") else database
    database = database.split("?", 1)[0]
    return None if database in ("", ":memory:") else database


def _open_storage(url: str, options: dict[str, Any], create: bool = False) -> Storage:
    scheme = _scheme(url)
    if scheme in ("http", "https"):
        # ``create`` is the server's to decide: `schedy server` opens its store with it.
        from .storage._http import HTTPStorage

        options = dict(options)
        if options.get("token") is None:
            options["token"] = os.environ.get("SCHEDY_TOKEN") or None
        return HTTPStorage(url, **options)
    from .storage._sql import SQLStorage

    if scheme == "":
        # A bare path is a SQLite file: SchedyDB('runs/schedy.db').
        url = "sqlite:///" + url
    elif scheme not in _SQL_SCHEMES:
        raise ValueError(
            f"unsupported store URL {url!r}: use sqlite:///path.db, postgresql://user@host/db, "
            "mysql://user@host/db (MariaDB or MySQL) or http(s)://host:port (a schedy server)"
        )
    elif url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    elif scheme in ("mysql", "mariadb") and url.split("://", 1)[0].lower() == scheme:
        # No driver named: the pure-Python one that `schedy[mysql]` installs.
        url = f"{scheme}+pymysql://" + url.split("://", 1)[1]
    return SQLStorage(url, create=create, **options)


class SchedyDB:
    """The handle on a store of experiments and jobs.

    ``url`` picks the backend: ``sqlite:///path.db``, ``postgresql://…`` (any
    SQLAlchemy URL) or ``http(s)://host:port`` (a schedy server). Without it,
    ``$SCHEDY_URL`` is used, else the embedded ``sqlite:///./schedy.db``.

    ``lease_seconds`` (default ``$SCHEDY_LEASE_SECONDS``, else 60) is how long
    a claimed job stays a worker's without a heartbeat; a worker killed
    mid-job frees its PBT member that long after its last heartbeat. Other
    options go to the backend: for SQL, SQLAlchemy ``create_engine``
    arguments; for a schedy server, ``token`` (default ``$SCHEDY_TOKEN``),
    ``timeout`` (seconds per request), ``retry_seconds`` (how long a call is
    retried while the server cannot be reached, default 300 or
    ``$SCHEDY_RETRY_SECONDS``) and ``verify`` (the CA bundle of an
    HTTPS server's certificate; default the system's or ``$REQUESTS_CA_BUNDLE``).

    A SQLite file that does not exist is created. One that exists but is
    empty (0 bytes) or holds no schedy tables is refused with a
    ``StorageError`` unless ``create=True``: a store truncated by accident,
    or a path to another program's database, must not silently become a new,
    empty store. ``schedy add`` and ``schedy server`` pass ``create=True``.
    Database servers (an empty database is initialised either way) and
    schedy servers ignore it.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        lease_seconds: float | None = None,
        create: bool = False,
        **options: Any,
    ) -> None:
        for legacy in ("config_path", "config_override"):
            if legacy in options:
                raise TypeError(
                    f"SchedyDB({legacy}=...) is the original Schedy client's web-service "
                    "configuration; this schedy takes a store URL instead: SchedyDB(url) with "
                    "sqlite:///path.db, postgresql://…, mysql://… or http(s)://host:port (a "
                    "schedy server, its token in $SCHEDY_TOKEN), or $SCHEDY_URL"
                )
        url = _resolve_url(url)
        if not isinstance(url, str) or not url:
            raise TypeError(f"url must be a non-empty string, not {url!r}")
        if lease_seconds is None:
            lease_seconds = _lease_from_environment()
        self.url = url
        self._lease_seconds = check_lease_seconds(lease_seconds)
        self._storage = _open_storage(url, options, create)

    def add_experiment(self, exp: Experiment) -> None:
        """Store a new experiment; ``ResourceExistsError`` if the name is taken."""
        if not isinstance(exp, Experiment):
            raise TypeError(
                f"add_experiment expects a schedy experiment (ManualSearch, RandomSearch, "
                f"PopulationBasedTraining), not {exp!r}"
            )
        self._storage.create_experiment(exp._record())
        exp._db = self

    def get_experiment(self, name: str) -> Experiment:
        """The stored experiment, as the right subclass; ``NotFoundError`` otherwise."""
        return self._bind(_experiment_from_record(self._storage.get_experiment(name)))

    def get_experiments(self) -> list[Experiment]:
        """Every stored experiment, oldest first."""
        return [
            self._bind(_experiment_from_record(record))
            for record in self._storage.list_experiments()
        ]

    def close(self) -> None:
        """Release the store's connections."""
        self._storage.close()

    def _bind(self, experiment: Experiment) -> Experiment:
        experiment._db = self
        return experiment

    def __enter__(self) -> SchedyDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SchedyDB({self.url!r})"
