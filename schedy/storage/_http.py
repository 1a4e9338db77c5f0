"""Storage over HTTP: the client of ``schedy server``.

Each ``Storage`` method is one request (see ``schedy.server._app`` for the
wire format); the server runs the same SQL storage -- and so the same
scheduling decision -- that a worker on the database would. Errors come
back typed and are raised as the same schedy errors.

A request that never reached the server (connection refused: the server
is restarting) is retried for a while, since nothing can have happened;
one whose answer was lost is not, because it may have taken effect.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from .. import _values
from .._records import Claim, ExperimentRecord, JobRecord, JobUpdate, MemberRecord
from ..errors import (
    AuthenticationError,
    NotFoundError,
    ResourceExistsError,
    SchemaVersionError,
    ServerError,
    StorageError,
    UnsafeUpdateError,
)
from ._base import Storage

__all__ = ["HTTPStorage"]

API_PREFIX = "/api/v1"

#: Error type names the server sends -> the exception raised here.
_ERRORS: dict[str, type[Exception]] = {
    "NotFoundError": NotFoundError,
    "ResourceExistsError": ResourceExistsError,
    "UnsafeUpdateError": UnsafeUpdateError,
    "SchemaVersionError": SchemaVersionError,
    "StorageError": StorageError,
    "AuthenticationError": AuthenticationError,
    "ValueError": ValueError,
    "TypeError": TypeError,
}

#: How long a request that could not connect is retried (a server restart).
_CONNECT_RETRY_S = 10.0


class HTTPStorage(Storage):
    """Storage on a ``schedy server`` at ``http(s)://host:port``.

    ``token`` is the server's token (sent as ``Authorization: Bearer``);
    ``timeout`` bounds each request, in seconds; ``verify`` is the CA bundle
    (a path) that signed an HTTPS server's certificate, or False to skip the
    check (default: the system's CAs, or ``$REQUESTS_CA_BUNDLE``).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        verify: bool | str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid schedy server URL {url!r}: use http(s)://host:port")
        if parts.username or parts.password:
            raise ValueError(
                f"the schedy server URL {url!r} holds credentials: give the token with "
                "token=... or $SCHEDY_TOKEN instead"
            )
        self.url = url
        path = parts.path.rstrip("/")
        self._base = urlunsplit((parts.scheme, parts.netloc, path + API_PREFIX, "", ""))
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._verify = verify
        # One session per thread: the heartbeat thread renews leases while
        # the worker's thread reports, and a Session is not thread-safe.
        self._local = threading.local()
        if hasattr(os, "register_at_fork"):
            # A forked worker must not share the parent's pooled connections.
            os.register_at_fork(after_in_child=self._after_fork)
        self._check_server()

    def _after_fork(self) -> None:
        self._local = threading.local()

    # -- transport -----------------------------------------------------------
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            self._local.session = session
        return session

    def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        data = None if body is None else _values.dumps(body).encode("utf-8")
        deadline = time.monotonic() + _CONNECT_RETRY_S
        delay = 0.05
        while True:
            try:
                response = self._session().request(
                    method,
                    self._base + path,
                    params=params,
                    data=data,
                    timeout=self._timeout,
                    # Per request: a Session's own `verify` loses to $REQUESTS_CA_BUNDLE.
                    verify=self._verify,
                )
                break
            except requests.ConnectionError as error:
                if _never_sent(error) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                raise StorageError(
                    f"cannot reach the schedy server at {self.url} ({_reason(error)}). "
                    "Check that `schedy server` runs there and the URL is right"
                    + ("; nothing was written." if _never_sent(error) else ".")
                ) from None
            except requests.Timeout:
                raise StorageError(
                    f"the schedy server at {self.url} did not answer {method} {path} within "
                    f"{self._timeout:g} s; the request may or may not have taken effect"
                ) from None
        return self._decode(response)

    def _decode(self, response: requests.Response) -> Any:
        try:
            # UTF-8 by the JSON spec: response.text would guess the charset
            # from the bytes, slowly, on every page of jobs.
            payload = _values.loads(response.content.decode("utf-8")) if response.content else None
        except ValueError:  # UnicodeDecodeError included
            payload = None
        if response.ok:
            if payload is None and response.content:
                raise ServerError(
                    f"{self.url} answered with something other than schedy JSON: is it a "
                    "schedy server?"
                )
            return payload
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            if response.status_code == 404:
                raise ServerError(
                    f"{self.url} has no schedy API at {response.url}: is it a schedy server?"
                )
            raise ServerError(f"{self.url} answered HTTP {response.status_code}")
        message = str(error.get("message") or f"HTTP {response.status_code}")
        raise _ERRORS.get(str(error.get("type")), ServerError)(message)

    def _check_server(self) -> None:
        """Fail at SchedyDB() -- unreachable, not a schedy server, wrong token --
        with a clear message, not at the first job."""
        found = self._call("GET", "/session")
        if not (isinstance(found, dict) and "schedy" in found):
            raise ServerError(f"{self.url} is not a schedy server")

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            self._local.session = None
            session.close()

    # -- experiments -----------------------------------------------------------
    def create_experiment(self, record: ExperimentRecord) -> None:
        self._call("POST", "/experiments", body=asdict(record))

    def get_experiment(self, name: str) -> ExperimentRecord:
        return ExperimentRecord(**self._call("GET", "/experiment", {"name": name}))

    def list_experiments(self) -> list[ExperimentRecord]:
        return [ExperimentRecord(**found) for found in self._call("GET", "/experiments")]

    def update_experiment(self, name: str, status: str, config: dict[str, Any]) -> None:
        self._call("PUT", "/experiment", {"name": name}, {"status": status, "config": config})

    def delete_experiment(self, name: str) -> None:
        self._call("DELETE", "/experiment", {"name": name})

    # -- jobs ------------------------------------------------------------------
    def add_job(
        self,
        experiment: str,
        status: str,
        hyperparameters: dict[str, Any],
        results: dict[str, Any],
    ) -> JobRecord:
        # Checked here, so an unstorable value names its key and sends nothing.
        body = {
            "status": status,
            "hyperparameters": _values.normalize_mapping(hyperparameters, "hyperparameters"),
            "results": _values.normalize_mapping(results, "results"),
        }
        return JobRecord(**self._call("POST", "/jobs", {"experiment": experiment}, body))

    def get_job(self, experiment: str, job_id: str) -> JobRecord:
        return JobRecord(**self._call("GET", "/job", {"experiment": experiment, "id": job_id}))

    def list_jobs(
        self, experiment: str, *, after: str | None = None, limit: int = 1000
    ) -> list[JobRecord]:
        params: dict[str, Any] = {"experiment": experiment, "limit": limit}
        if after is not None:
            params["after"] = after
        return [JobRecord(**found) for found in self._call("GET", "/jobs", params)]

    def update_job(
        self,
        experiment: str,
        job_id: str,
        update: JobUpdate,
        lease_token: str | None = None,
    ) -> JobRecord:
        body: dict[str, Any] = {"lease_token": lease_token}
        if update.status is not None:
            body["status"] = update.status
        if update.hyperparameters is not None:
            body["hyperparameters"] = _values.normalize_mapping(
                update.hyperparameters, "hyperparameters"
            )
        if update.results is not None:
            body["results"] = _values.normalize_mapping(update.results, "results")
        if update.error is not None:
            body["error"] = update.error
        found = self._call("PATCH", "/job", {"experiment": experiment, "id": job_id}, body)
        return JobRecord(**found)

    def delete_job(self, experiment: str, job_id: str) -> None:
        self._call("DELETE", "/job", {"experiment": experiment, "id": job_id})

    # -- scheduling ------------------------------------------------------------
    def claim_job(self, experiment: str, lease_seconds: float) -> Claim:
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        found = self._call(
            "POST", "/claim", {"experiment": experiment}, {"lease_seconds": lease_seconds}
        )
        job = None if found["job"] is None else JobRecord(**found["job"])
        return Claim(job, wait=bool(found["wait"]), reason=str(found["reason"]))

    def renew_lease(
        self, experiment: str, job_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        found = self._call(
            "POST",
            "/lease",
            {"experiment": experiment, "id": job_id},
            {"lease_token": lease_token, "lease_seconds": lease_seconds},
        )
        return bool(found["renewed"])

    def jobs_in_use(self, experiment: str, top_k: int) -> list[JobRecord]:
        found = self._call("GET", "/jobs-in-use", {"experiment": experiment, "top_k": top_k})
        return [JobRecord(**job) for job in found]

    def top_jobs(self, experiment: str, k: int) -> list[JobRecord]:
        found = self._call("GET", "/top-jobs", {"experiment": experiment, "k": k})
        return [JobRecord(**job) for job in found]

    def get_members(self, experiment: str) -> list[MemberRecord]:
        found = self._call("GET", "/members", {"experiment": experiment})
        return [MemberRecord(**member) for member in found]


def _never_sent(error: requests.ConnectionError) -> bool:
    """Whether the connection failed before the request went out (safe to retry)."""
    text = repr(error)
    return any(
        sign in text for sign in ("NewConnectionError", "Connection refused", "ConnectTimeout")
    )


def _reason(error: requests.ConnectionError) -> str:
    text = str(error)
    return "connection refused" if "Connection refused" in text else text
