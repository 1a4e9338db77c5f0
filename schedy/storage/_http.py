"""Storage over HTTP: the client of ``schedy server``.

Each ``Storage`` method is one request in the format of ``schedy._wire``,
which the server imports too; the server runs the same SQL storage -- and so
the same scheduling decision -- that a worker on the database would. Errors
come back typed and are raised as the same schedy errors; a failure to talk
to the server at all is a :class:`~schedy.errors.StorageError`, never an
exception of ``requests`` or ``urllib3``.

A request that never reached the server (connection refused or timed out:
the server is restarting) is retried for a while (``retry_seconds``, 10 s by
default), whatever its method, since nothing can have happened. One whose
answer was lost is not, because it may have taken effect. The retrying is
urllib3's own (a ``Retry`` on each session's adapter, allowed connect errors
only), so it knows from the exception *types* whether a request went out
instead of guessing from error messages.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.util.retry import Retry

from .. import _wire
from .._records import (
    Claim,
    ExperimentRecord,
    JobRecord,
    JobUpdate,
    MemberRecord,
    check_lease_seconds,
)
from ..errors import ServerError, StorageError
from ._base import Storage

if TYPE_CHECKING:
    from typing import Self

    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

__all__ = ["HTTPStorage"]

#: How long a request that could not connect is retried (a server restart),
#: unless ``HTTPStorage(retry_seconds=...)`` says otherwise.
_CONNECT_RETRY_S = 10.0
#: urllib3's exponential backoff between those tries: 0, 0.05, 0.1, 0.2, ... then 1 s.
_BACKOFF_FACTOR_S = 0.025
_BACKOFF_MAX_S = 1.0


class _ConnectRetry(Retry):
    """urllib3's ``Retry`` for connect failures only, also bounded by time.

    Connect errors and connect timeouts are retried, for any method: a request
    that never connected did nothing. Nothing else is (``read=False`` re-raises
    a read error as itself, so a read timeout stays a read timeout; no status
    or other retries). The count of connect tries is unbounded; instead the
    first failure sets a deadline ``budget`` seconds ahead, after which the
    next failure is final, and no backoff sleeps past it.
    """

    def __init__(self, *, budget: float, deadline: float | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.budget = budget
        self.deadline = deadline

    @classmethod
    def connect_only(cls, budget: float) -> _ConnectRetry:
        return cls(
            budget=budget,
            total=None,
            connect=None,  # bounded by the deadline instead
            read=False,
            redirect=0,  # requests follows redirects itself
            status=0,
            other=0,
            allowed_methods=None,  # any method: the request never went out
            status_forcelist=None,
            backoff_factor=_BACKOFF_FACTOR_S,  # capped in get_backoff_time (urllib3 1.26 too)
            raise_on_status=False,
            respect_retry_after_header=False,
        )

    def new(self, **options: Any) -> Self:
        options.setdefault("budget", self.budget)
        options.setdefault("deadline", self.deadline)
        return super().new(**options)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if self.deadline is None:  # the first failure of this request starts the clock
            started = self.new(deadline=time.monotonic() + self.budget)
            return started.increment(method, url, response, error, _pool, _stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def is_exhausted(self) -> bool:
        past = self.deadline is not None and time.monotonic() >= self.deadline
        return past or super().is_exhausted()

    def get_backoff_time(self) -> float:
        backoff = min(super().get_backoff_time(), _BACKOFF_MAX_S)
        if self.deadline is None:
            return backoff
        return max(0.0, min(backoff, self.deadline - time.monotonic()))


class HTTPStorage(Storage):
    """Storage on a ``schedy server`` at ``http(s)://host:port``.

    ``token`` is the server's token (sent as ``Authorization: Bearer``);
    ``timeout`` bounds each request, in seconds; ``verify`` is the CA bundle
    (a path) that signed an HTTPS server's certificate, or False to skip the
    check (default: the system's CAs, or ``$REQUESTS_CA_BUNDLE``);
    ``retry_seconds`` is how long a request that cannot connect is retried
    (default 10 s; 0 never retries).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        verify: bool | str | None = None,
        retry_seconds: float | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid schedy server URL {url!r}: use http(s)://host:port")
        if parts.username or parts.password:
            raise ValueError(
                f"the schedy server URL {url!r} holds credentials: give the token with "
                "token=... or $SCHEDY_TOKEN instead"
            )
        if retry_seconds is None:
            retry_seconds = _CONNECT_RETRY_S
        if not retry_seconds >= 0:
            raise ValueError(f"retry_seconds must be >= 0, got {retry_seconds!r}")
        self.url = url
        path = parts.path.rstrip("/")
        self._base = urlunsplit((parts.scheme, parts.netloc, path + _wire.API_PREFIX, "", ""))
        self._headers = {"Accept": _wire.MEDIA_TYPE, "Content-Type": _wire.MEDIA_TYPE}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._verify = verify
        self._retry_seconds = float(retry_seconds)
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
            adapter = HTTPAdapter(max_retries=_ConnectRetry.connect_only(self._retry_seconds))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        data = None if body is None else _wire.encode(body)
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
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            raise self._failure(error, f"{method} {path}") from None
        return self._decode(response)

    def _failure(self, error: Exception, request: str) -> StorageError:
        """What went wrong talking to the server, told by the exception's type."""
        reason = _reason(error)
        if isinstance(error, requests.exceptions.SSLError):
            return StorageError(
                f"cannot reach the schedy server at {self.url} over HTTPS ({_describe(reason)}): "
                "give the CA bundle that signed its certificate as verify=... or "
                "$REQUESTS_CA_BUNDLE" + ("; nothing was written." if _never_sent(error) else ".")
            )
        if _never_sent(error):
            what = (
                f"no connection within {self._timeout:g} s"
                if isinstance(error, requests.ConnectTimeout)
                else _describe(reason)
            )
            tried = f", retried for {self._retry_seconds:g} s" if self._retry_seconds else ""
            return StorageError(
                f"cannot reach the schedy server at {self.url} ({what}{tried}). "
                "Check that `schedy server` runs there and the URL is right; nothing was written."
            )
        if isinstance(error, requests.Timeout):
            return StorageError(
                f"the schedy server at {self.url} did not answer {request} within "
                f"{self._timeout:g} s; the request may or may not have taken effect"
            )
        if isinstance(error, requests.exceptions.ChunkedEncodingError):
            return StorageError(
                f"the answer of the schedy server at {self.url} to {request} was cut off "
                f"({_describe(reason)}); the request may or may not have taken effect"
            )
        if isinstance(error, requests.exceptions.ContentDecodingError):
            return StorageError(
                f"the answer of the schedy server at {self.url} to {request} could not be "
                f"decompressed ({_describe(reason)}); the request may or may not have taken effect"
            )
        if isinstance(error, requests.ConnectionError):
            return StorageError(
                f"cannot reach the schedy server at {self.url}: the connection broke before "
                f"{request} was answered ({_describe(reason)}); the request may or may not have "
                "taken effect. Check that `schedy server` runs there and the URL is right"
            )
        return StorageError(
            f"{request} to the schedy server at {self.url} failed: {_describe(reason)}; "
            "the request may or may not have taken effect"
        )

    def _decode(self, response: requests.Response) -> Any:
        try:
            payload = _wire.decode(response.content) if response.content else None
        except ValueError:  # UnicodeDecodeError included
            payload = None
        if response.ok:
            if payload is None and response.content:
                raise ServerError(
                    f"{self.url} answered with something other than schedy JSON: is it a "
                    "schedy server?"
                )
            return payload
        error = _wire.decode_error(response.status_code, payload)
        if error is None:
            if response.status_code == 404:
                raise ServerError(
                    f"{self.url} has no schedy API at {response.url}: is it a schedy server?"
                )
            raise ServerError(f"{self.url} answered HTTP {response.status_code}")
        raise error

    def _check_server(self) -> None:
        """Fail at SchedyDB() -- unreachable, not a schedy server, wrong token --
        with a clear message, not at the first job."""
        if not _wire.is_hello(self._call("GET", "/session")):
            raise ServerError(f"{self.url} is not a schedy server")

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            self._local.session = None
            session.close()

    # -- experiments -----------------------------------------------------------
    def create_experiment(self, record: ExperimentRecord) -> None:
        self._call("POST", "/experiments", body=_wire.encode_experiment(record))

    def get_experiment(self, name: str) -> ExperimentRecord:
        return _wire.decode_experiment(self._call("GET", "/experiment", {"name": name}))

    def list_experiments(self) -> list[ExperimentRecord]:
        return _wire.decode_experiments(self._call("GET", "/experiments"))

    def update_experiment(self, name: str, status: str, config: dict[str, Any]) -> None:
        change = _wire.ExperimentChange(status=status, config=config)
        self._call("PUT", "/experiment", {"name": name}, _wire.body(change))

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
        body = _wire.body(_wire.NewJob.of(status, hyperparameters, results))
        return _wire.decode_job(self._call("POST", "/jobs", {"experiment": experiment}, body))

    def get_job(self, experiment: str, job_id: str) -> JobRecord:
        found = self._call("GET", "/job", {"experiment": experiment, "id": job_id})
        return _wire.decode_job(found)

    def list_jobs(
        self, experiment: str, *, after: str | None = None, limit: int = 1000
    ) -> list[JobRecord]:
        params: dict[str, Any] = {"experiment": experiment, "limit": limit}
        if after is not None:
            params["after"] = after
        return _wire.decode_jobs(self._call("GET", "/jobs", params))

    def update_job(
        self,
        experiment: str,
        job_id: str,
        update: JobUpdate,
        lease_token: str | None = None,
    ) -> JobRecord:
        body = _wire.body(_wire.JobChange.of(update, lease_token))
        found = self._call("PATCH", "/job", {"experiment": experiment, "id": job_id}, body)
        return _wire.decode_job(found)

    def delete_job(self, experiment: str, job_id: str) -> None:
        self._call("DELETE", "/job", {"experiment": experiment, "id": job_id})

    # -- scheduling ------------------------------------------------------------
    def claim_job(
        self, experiment: str, lease_seconds: float, request_id: str | None = None
    ) -> Claim:
        lease_seconds = check_lease_seconds(lease_seconds)
        body = _wire.body(_wire.ClaimRequest(lease_seconds=lease_seconds, request_id=request_id))
        return _wire.decode_claim(self._call("POST", "/claim", {"experiment": experiment}, body))

    def renew_lease(
        self, experiment: str, job_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        renewal = _wire.LeaseRenewal(lease_token=lease_token, lease_seconds=lease_seconds)
        params = {"experiment": experiment, "id": job_id}
        return _wire.decode_renewed(self._call("POST", "/lease", params, _wire.body(renewal)))

    def jobs_in_use(self, experiment: str, top_k: int) -> list[JobRecord]:
        found = self._call("GET", "/jobs-in-use", {"experiment": experiment, "top_k": top_k})
        return _wire.decode_jobs(found)

    def top_jobs(self, experiment: str, k: int) -> list[JobRecord]:
        return _wire.decode_jobs(self._call("GET", "/top-jobs", {"experiment": experiment, "k": k}))

    def get_members(self, experiment: str) -> list[MemberRecord]:
        return _wire.decode_members(self._call("GET", "/members", {"experiment": experiment}))


def _reason(error: Exception) -> BaseException:
    """The urllib3 error a requests exception wraps (the reason of a
    MaxRetryError, the proxy's own error unwrapped), or ``error`` itself."""
    cause: BaseException = error
    if isinstance(error, requests.RequestException) and error.args:
        cause = error.args[0] if isinstance(error.args[0], BaseException) else error
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    if isinstance(cause, urllib3.exceptions.ProxyError):
        cause = cause.original_error
    return cause


def _never_sent(error: Exception) -> bool:
    """Whether the request failed before it went out: no connection was made
    (refused, timed out, unknown host) or TLS refused the server's certificate."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    reason = _reason(error)
    if isinstance(reason, urllib3.exceptions.SSLError) and reason.args:
        reason = reason.args[0] if isinstance(reason.args[0], BaseException) else reason
    return isinstance(reason, (ConnectTimeoutError, ssl.SSLCertVerificationError))


def _describe(reason: BaseException) -> str:
    """A short account of ``reason``: the system's words for a socket error
    (``connection refused``), else the error's own message."""
    if isinstance(reason, NewConnectionError):  # NameResolutionError included
        reason = reason.__cause__ or reason  # the socket's error
    elif isinstance(reason, urllib3.exceptions.HTTPError) and reason.args:
        # ("Connection aborted.", RemoteDisconnected(...)): the error it wraps says more
        last = reason.args[-1]
        reason = last if isinstance(last, BaseException) else reason
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    return str(reason) or type(reason).__name__
