"""Storage over HTTP: the client of ``schedy server``.

Each ``Storage`` method is one request in the format of ``schedy._wire``,
which the server imports too; the server runs the same SQL storage -- and so
the same scheduling decision -- that a worker on the database would. Errors
come back typed and are raised as the same schedy errors; a failure to talk
to the server at all is a :class:`~schedy.errors.StorageError`, never an
exception of ``requests`` or ``urllib3``.

Why the retrying is as it is: a worker must ride out a restart or a failover
of the server, or of the database behind it, without an error reaching its
code -- yet never do twice what must be done once. So each call says
whether it is *idempotent* (sending it again after its answer was lost does
no harm), and every call is retried for ``retry_seconds`` (300 s by default,
or ``$SCHEDY_RETRY_SECONDS``; the first failure starts the clock):

* any call, while the server cannot be connected to (refused, connect
  timeout): such a request never went out, so nothing happened;
* an idempotent call also when its answer was lost (the connection broke, a
  read timeout, an answer cut off) or was 502, 503 or 504 (a proxy whose
  server is down, the server's database unavailable). Idempotent are: the
  reads; ``update_experiment`` and ``update_job`` under a lease token or to
  an ended status (absolute values); ``renew_lease``; ``claim_job``, sent
  with a request id of its own, under which the server hands a retry the
  job it already claimed; ``create_experiment`` and the deletions, whose
  retry may find its own work done (taken, or gone): that is checked (the
  stored experiment is the one sent) and then is success. Likewise a job's
  last ``update_job`` whose first try ended the job is refused as no
  longer ours when sent again: the stored job is checked to be what was
  sent, and returned;
* not idempotent: ``add_job`` (it would add a second job) and an
  ``update_job`` that starts a job by hand without a lease (the server
  grants it one, and a retry would not learn it). Once they may have reached
  the server they are not sent again, and fail with a StorageError saying
  they may or may not have taken effect.

The decisions are urllib3's own ``Retry`` (on each session's adapter, set
per call): it tells from the exception *types* whether a request went out,
applies ``status_forcelist`` and backs off. Written here are only what it
cannot see -- an answer cut off while its body was read, after urllib3 handed
it over -- and rounds: urllib3 nests one call per retry, so a long outage is
retried in rounds of :data:`_ROUND` tries lest the stack overflow; that one
loop waits on :class:`~schedy._backoff.Backoff`. An outage is logged once per
client (a warning when a call first fails, a line when the server answers
again), and urllib3's warning per retry is silenced for these retries.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import secrets
import ssl
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util.retry import RequestHistory, Retry

from .. import _artifacts, _values, _wire
from .._artifacts import ArtifactInfo
from .._backoff import Backoff
from .._records import (
    Claim,
    ExperimentRecord,
    JobRecord,
    JobStatus,
    JobUpdate,
    MemberRecord,
    check_lease_seconds,
)
from ..errors import (
    NotFoundError,
    ResourceExistsError,
    ServerError,
    StorageError,
    UnsafeUpdateError,
)
from ._base import Storage

if TYPE_CHECKING:
    from typing import Self

    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

__all__ = ["HTTPStorage"]

logger = logging.getLogger(__name__)

#: How long a failing call is retried (a server restart, a failover), unless
#: ``HTTPStorage(retry_seconds=...)`` or ``$SCHEDY_RETRY_SECONDS`` says otherwise.
#: More than a lease (60 s by default): an outage shorter than the lease loses nothing.
_RETRY_S = 300.0
_RETRY_ENV = "SCHEDY_RETRY_SECONDS"
#: Answers an idempotent call is retried on: a proxy without its server, an
#: unavailable database behind the server, a gateway timeout.
_RETRY_STATUSES = frozenset({502, 503, 504})
#: urllib3's exponential backoff between tries: 0, 0.05, 0.1, 0.2, ... then 1 s.
_BACKOFF_FACTOR_S = 0.025
_BACKOFF_MAX_S = 1.0
#: Tries per round of urllib3 retries (each nests a call, so a round must stay short).
_ROUND = 50

#: What a failed exchange with the server may raise, besides schedy's own errors.
_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


def _seconds(value: float) -> str:
    return "ever" if math.isinf(value) else f"{value:g} s"


def _retry_budget(value: float | None) -> float:
    """``retry_seconds`` checked, else ``$SCHEDY_RETRY_SECONDS``, else the default."""
    what = "retry_seconds"
    if value is None:
        text = os.environ.get(_RETRY_ENV, "").strip()
        if not text:
            return _RETRY_S
        what = f"${_RETRY_ENV}"
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{what} must be a number of seconds, not {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, got {value!r}")
    return float(value)


class _Outage:
    """Tells once that the server cannot be reached, and once that it answers
    again: every thread's calls (the heartbeat's included) share one client."""

    def __init__(self, url: str, budget: float) -> None:
        self._url = url
        self._budget = budget
        self._lock = threading.Lock()
        self._since: float | None = None

    def begin(self, cause: str) -> None:
        if self._since is not None:
            return
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        logger.warning(
            "the schedy server at %s cannot be reached (%s); retrying for up to %s",
            self._url,
            cause,
            _seconds(self._budget),
        )

    def end(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            logger.info(
                "the schedy server at %s answers again, after %.1f s",
                self._url,
                time.monotonic() - since,
            )


class _Call:
    """One storage call's retrying, shared by every copy urllib3 makes of its
    ``Retry`` and by the rounds: the deadline its first failure set, the
    failures so far, and whether one of them may have taken effect."""

    __slots__ = (
        "budget",
        "deadline",
        "history",
        "idempotent",
        "maybe_applied",
        "outage",
        "request",
        "resume",
        "round_start",
    )

    def __init__(self, request: str, idempotent: bool, budget: float, outage: _Outage) -> None:
        self.request = request
        self.idempotent = idempotent
        self.budget = budget
        self.outage = outage
        self.deadline: float | None = None
        self.history: tuple[RequestHistory, ...] = ()
        self.maybe_applied = False
        self.resume = False  # urllib3 ended a round of tries: go on with another
        self.round_start = 0

    def start(self) -> None:
        """The first failure starts the clock."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.budget

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def failed(self, cause: str, maybe_applied: bool) -> None:
        """A try failed and is to be retried."""
        self.start()
        self.maybe_applied = self.maybe_applied or maybe_applied
        self.outage.begin(cause)


class _ServerRetry(Retry):
    """urllib3's ``Retry`` for one call, bounded by time rather than counts.

    Connect failures are retried for any call (the request never went out).
    Read failures (a lost answer, a read timeout) and 502/503/504 answers
    only for an idempotent one (``read=False`` re-raises a read error as
    itself, ``status_forcelist=None`` returns the answer). Other errors (a
    refused certificate, say) are not retried. There is no count: the
    call's first failure sets a deadline ``budget`` seconds ahead, after
    which the next failure is final, and no backoff sleeps past it. After
    :data:`_ROUND` tries the round ends (``call.resume``) and the caller
    starts another, with the same deadline and history (so the backoff goes on).
    """

    def __init__(self, *, call: _Call, **options: Any) -> None:
        super().__init__(**options)
        self.call = call

    @classmethod
    def of(cls, call: _Call) -> _ServerRetry:
        safe = call.idempotent
        return cls(
            call=call,
            total=None,
            connect=None,  # bounded by the deadline instead
            read=None if safe else False,
            redirect=0,  # requests follows redirects itself
            status=None if safe else 0,
            other=0,
            allowed_methods=None,  # any method: idempotence is the call's, not the verb's
            status_forcelist=_RETRY_STATUSES if safe else None,
            backoff_factor=_BACKOFF_FACTOR_S,  # capped in get_backoff_time (urllib3 1.26 too)
            raise_on_status=False,  # the last answer is decoded: a schedy error says why
            respect_retry_after_header=False,  # a proxy's Retry-After may pass the deadline
            history=call.history,
        )

    def new(self, **options: Any) -> Self:
        options.setdefault("call", self.call)
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
        call = self.call
        call.start()
        reached = response is not None or (error is not None and self._is_read_error(error))
        if error is not None:
            cause = _describe(error)
        else:
            cause = f"HTTP {response.status}" if response is not None else "no answer"
        last_of_round = len(self.history) - call.round_start >= _ROUND - 1
        # A round's last try: a total of 0 has urllib3 end it with MaxRetryError.
        retry = self.new(total=0) if last_of_round else self
        try:
            new = Retry.increment(retry, method, url, response, error, _pool, _stacktrace)
        except MaxRetryError:
            call.resume = last_of_round and call.remaining() > 0
            if call.resume:
                call.failed(cause, reached)
            raise
        call.history = new.history
        call.failed(cause, reached)
        return new

    def is_exhausted(self) -> bool:
        return self.call.remaining() <= 0 or super().is_exhausted()

    def get_backoff_time(self) -> float:
        backoff = min(super().get_backoff_time(), _BACKOFF_MAX_S)
        return max(0.0, min(backoff, self.call.remaining()))


class _QuietRetries(logging.Filter):
    """Drops urllib3's "Retrying (...) after connection broken" warning for our
    retries: an outage is told once by :class:`_Outage`, not once a second."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and args and isinstance(args[0], _ServerRetry))


logging.getLogger("urllib3.connectionpool").addFilter(_QuietRetries())


class HTTPStorage(Storage):
    """Storage on a ``schedy server`` at ``http(s)://host:port``.

    ``token`` is the server's token (sent as ``Authorization: Bearer``);
    ``timeout`` bounds each request, in seconds; ``verify`` is the CA bundle
    (a path) that signed an HTTPS server's certificate, or False to skip the
    check (default: the system's CAs, or ``$REQUESTS_CA_BUNDLE``);
    ``retry_seconds`` is how long a call is retried while the server cannot
    be reached or, for a call that may safely be sent again, answers 502,
    503 or 504 or loses the answer (default ``$SCHEDY_RETRY_SECONDS``, else
    300 s; 0 never retries, ``math.inf`` retries for ever). See the module
    docstring for which calls those are.
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
        self.url = url
        path = parts.path.rstrip("/")
        self._base = urlunsplit((parts.scheme, parts.netloc, path + _wire.API_PREFIX, "", ""))
        self._headers = {"Accept": _wire.MEDIA_TYPE, "Content-Type": _wire.MEDIA_TYPE}
        # A token read from a file or the environment often ends in a newline;
        # sent as it is, the HTTP library would refuse it with the secret in its message.
        token = token.strip() if isinstance(token, str) else token
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._verify = verify
        self._retry_seconds = _retry_budget(retry_seconds)
        self._outage = _Outage(url, self._retry_seconds)
        # One session per thread: the heartbeat thread renews leases while
        # the worker's thread reports, and a Session is not thread-safe.
        self._local = threading.local()
        if hasattr(os, "register_at_fork"):
            # A forked worker must not share the parent's pooled connections.
            os.register_at_fork(after_in_child=self._after_fork)
        self._check_server()

    def _after_fork(self) -> None:
        self._local = threading.local()
        self._outage = _Outage(self.url, self._retry_seconds)  # its lock may be held

    # -- transport -----------------------------------------------------------
    def _transport(self) -> tuple[requests.Session, HTTPAdapter]:
        local = self._local
        session: requests.Session | None = getattr(local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            adapter = HTTPAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            local.session, local.adapter = session, adapter
        found: HTTPAdapter = local.adapter
        return session, found

    def _session(self) -> requests.Session:
        return self._transport()[0]

    def _new_call(self, method: str, path: str, idempotent: bool) -> _Call:
        return _Call(f"{method} {path}", idempotent, self._retry_seconds, self._outage)

    def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        *,
        idempotent: bool,
        call: _Call | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one request, retried as ``idempotent`` allows; its decoded answer.

        ``data`` is a body to send as it is (an open file is streamed, and
        rewound by urllib3 for a retry); ``raw`` returns a successful answer
        unread (``stream=True``), for the caller to stream."""
        call = call or self._new_call(method, path, idempotent)
        data = data if body is None else _wire.encode(body)
        if params:
            params = {key: _query_value(value) for key, value in params.items()}
        session, adapter = self._transport()
        pause: Backoff | None = None
        while True:
            call.resume = False
            call.round_start = len(call.history)
            adapter.max_retries = _ServerRetry.of(call)  # this thread's adapter: ours alone
            last: requests.Response | Exception
            try:
                response = session.request(
                    method,
                    self._base + path,
                    params=params,
                    data=data,
                    headers=headers,
                    stream=raw,
                    timeout=self._timeout,
                    # Per request: a Session's own `verify` loses to $REQUESTS_CA_BUNDLE.
                    verify=self._verify,
                )
            except _TRANSPORT_ERRORS as error:
                if not call.resume:
                    if not (call.idempotent and _cut_off(error)):
                        raise self._failure(error, call) from None
                    # Lost while the body was read: urllib3 had handed the answer over.
                    call.failed(_describe(_reason(error)), maybe_applied=True)
                last = error
            else:
                if not call.resume:
                    if response.status_code not in _RETRY_STATUSES:
                        self._outage.end()
                    if raw and (response.ok or method == "HEAD"):  # a HEAD's status is its answer
                        return response
                    return self._decode(response, call)
                last = response
            if pause is None:
                pause = Backoff(_BACKOFF_FACTOR_S * 2, _BACKOFF_MAX_S, budget=call.remaining())
            if not pause.wait():
                if isinstance(last, requests.Response):
                    return self._decode(last, call)
                raise self._failure(last, call) from None

    def _failure(self, error: Exception, call: _Call) -> StorageError:
        """What went wrong talking to the server, told by the exception's type."""
        request = call.request
        reason = _reason(error)
        tried = f", retried for {_seconds(call.budget)}" if call.budget else ""
        effect = "the request may or may not have taken effect"
        if not call.idempotent:
            tried = ""
            effect += (
                f" ({request} is not sent again once it may have arrived: it could happen twice)"
            )
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
                or (
                    isinstance(reason, ConnectTimeoutError)
                    and not isinstance(reason, NewConnectionError)
                )
                else _describe(reason)
            )
            connect_tried = f", retried for {_seconds(call.budget)}" if call.budget else ""
            written = (
                f"an earlier try's answer was lost, so {effect}"
                if call.maybe_applied
                else "nothing was written"
            )
            return StorageError(
                f"cannot reach the schedy server at {self.url} ({what}{connect_tried}). "
                f"Check that `schedy server` runs there and the URL is right; {written}."
            )
        if isinstance(error, requests.Timeout) or isinstance(reason, ReadTimeoutError):
            return StorageError(
                f"the schedy server at {self.url} did not answer {request} within "
                f"{self._timeout:g} s{tried}; {effect}"
            )
        if isinstance(error, requests.exceptions.ChunkedEncodingError):
            return StorageError(
                f"the answer of the schedy server at {self.url} to {request} was cut off "
                f"({_describe(reason)}{tried}); {effect}"
            )
        if isinstance(error, requests.exceptions.ContentDecodingError):
            return StorageError(
                f"the answer of the schedy server at {self.url} to {request} could not be "
                f"decompressed ({_describe(reason)}); {effect}"
            )
        if isinstance(error, requests.ConnectionError):
            return StorageError(
                f"cannot reach the schedy server at {self.url}: the connection broke before "
                f"{request} was answered ({_describe(reason)}{tried}); {effect}. Check that "
                "`schedy server` runs there and the URL is right"
            )
        return StorageError(
            f"{request} to the schedy server at {self.url} failed: {_describe(reason)}; {effect}"
        )

    def _decode(self, response: requests.Response, call: _Call) -> Any:
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
        if error is not None:
            raise error
        status = response.status_code
        if status in _RETRY_STATUSES:  # a proxy's page: its server is away
            tried = f" for {_seconds(call.budget)}" if call.idempotent and call.budget else ""
            raise StorageError(
                f"the schedy server at {self.url} is unavailable: {call.request} was "
                f"answered HTTP {status}{tried} (by a proxy in front of it?); the request may "
                "or may not have taken effect"
            )
        if status == 404:
            raise ServerError(
                f"{self.url} has no schedy API at {response.url}: is it a schedy server?"
            )
        raise ServerError(f"{self.url} answered HTTP {status}")

    def _check_server(self) -> None:
        """Fail at SchedyDB() -- unreachable, not a schedy server, wrong token --
        with a clear message, not at the first job."""
        if not _wire.is_hello(self._call("GET", "/session", idempotent=True)):
            raise ServerError(f"{self.url} is not a schedy server")

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            self._local.session = None
            session.close()

    # -- experiments -----------------------------------------------------------
    def create_experiment(self, record: ExperimentRecord) -> None:
        sent = _wire.encode_experiment(record)
        call = self._new_call("POST", "/experiments", idempotent=True)
        try:
            self._call("POST", "/experiments", body=sent, idempotent=True, call=call)
        except ResourceExistsError:
            # Taken by this very call, whose first answer was lost?
            if not call.maybe_applied or not self._holds_experiment(record):
                raise

    def _holds_experiment(self, record: ExperimentRecord) -> bool:
        try:
            stored = self.get_experiment(record.name)
        except NotFoundError:
            return False
        return (stored.kind, stored.status, _values.canonical(stored.config)) == (
            record.kind,
            record.status,
            _values.canonical(record.config),
        )

    def get_experiment(self, name: str) -> ExperimentRecord:
        found = self._call("GET", "/experiment", {"name": name}, idempotent=True)
        return _wire.decode_experiment(found)

    def list_experiments(self) -> list[ExperimentRecord]:
        return _wire.decode_experiments(self._call("GET", "/experiments", idempotent=True))

    def update_experiment(self, name: str, status: str, config: dict[str, Any]) -> None:
        change = _wire.ExperimentChange(status=status, config=config)
        self._call("PUT", "/experiment", {"name": name}, _wire.body(change), idempotent=True)

    def delete_experiment(self, name: str) -> None:
        self._delete("/experiment", {"name": name})

    def _delete(self, path: str, params: dict[str, Any]) -> None:
        call = self._new_call("DELETE", path, idempotent=True)
        try:
            self._call("DELETE", path, params, idempotent=True, call=call)
        except NotFoundError:
            if not call.maybe_applied:  # gone already, maybe by this very call's first try
                raise

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
        # Not idempotent: sent again after a lost answer, it would add a second job.
        added = self._call("POST", "/jobs", {"experiment": experiment}, body, idempotent=False)
        return self._handed_out(experiment, _wire.decode_job(added))

    def _handed_out(self, experiment: str, record: JobRecord) -> JobRecord:
        """Note that this server handed out ``record`` (its checkpoint may be an artifact here)."""
        _artifacts.remember(record.id, experiment, self)
        return record

    def get_job(self, experiment: str, job_id: str) -> JobRecord:
        params = {"experiment": experiment, "id": job_id}
        found = _wire.decode_job(self._call("GET", "/job", params, idempotent=True))
        return self._handed_out(experiment, found)

    def list_jobs(
        self, experiment: str, *, after: str | None = None, limit: int = 1000
    ) -> list[JobRecord]:
        params: dict[str, Any] = {"experiment": experiment, "limit": limit}
        if after is not None:
            params["after"] = after
        return _wire.decode_jobs(self._call("GET", "/jobs", params, idempotent=True))

    def update_job(
        self,
        experiment: str,
        job_id: str,
        update: JobUpdate,
        lease_token: str | None = None,
    ) -> JobRecord:
        change = _wire.JobChange.of(update, lease_token)
        # Absolute values: the same again changes nothing -- but a job started
        # by hand without a lease is granted one, which a retry would not learn.
        idempotent = lease_token is not None or update.status != JobStatus.RUNNING
        params = {"experiment": experiment, "id": job_id}
        call = self._new_call("PATCH", "/job", idempotent)
        try:
            found = self._call(
                "PATCH", "/job", params, _wire.body(change), idempotent=idempotent, call=call
            )
        except UnsafeUpdateError:
            # The first try ended the job (lease released) but its answer was
            # lost: a retry is refused. Then the job holds what was sent.
            if not call.maybe_applied:
                raise
            stored = self.get_job(experiment, job_id)
            if not _holds(stored, change):
                raise
            return stored
        return _wire.decode_job(found)

    def delete_job(self, experiment: str, job_id: str) -> None:
        self._delete("/job", {"experiment": experiment, "id": job_id})

    # -- scheduling ------------------------------------------------------------
    def claim_job(
        self, experiment: str, lease_seconds: float, request_id: str | None = None
    ) -> Claim:
        lease_seconds = check_lease_seconds(lease_seconds)
        # One id per claim: sent again after a lost answer, the claim gets the
        # job it already claimed instead of a second one.
        request_id = request_id or secrets.token_hex(16)
        body = _wire.body(_wire.ClaimRequest(lease_seconds=lease_seconds, request_id=request_id))
        claimed = self._call("POST", "/claim", {"experiment": experiment}, body, idempotent=True)
        claim = _wire.decode_claim(claimed)
        if claim.job is not None:
            self._handed_out(experiment, claim.job)
        return claim

    def renew_lease(
        self, experiment: str, job_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        # Idempotent: the lease then ends lease_seconds after the last renewal that arrived.
        renewal = _wire.LeaseRenewal(lease_token=lease_token, lease_seconds=lease_seconds)
        params = {"experiment": experiment, "id": job_id}
        renewed = self._call("POST", "/lease", params, _wire.body(renewal), idempotent=True)
        return _wire.decode_renewed(renewed)

    def jobs_in_use(self, experiment: str, top_k: int) -> list[JobRecord]:
        params = {"experiment": experiment, "top_k": top_k}
        return _wire.decode_jobs(self._call("GET", "/jobs-in-use", params, idempotent=True))

    def top_jobs(self, experiment: str, k: int) -> list[JobRecord]:
        params = {"experiment": experiment, "k": k}
        return _wire.decode_jobs(self._call("GET", "/top-jobs", params, idempotent=True))

    def get_members(self, experiment: str) -> list[MemberRecord]:
        params = {"experiment": experiment}
        return _wire.decode_members(self._call("GET", "/members", params, idempotent=True))

    # -- artifacts ---------------------------------------------------------------
    def keeps_artifacts(self) -> bool:
        """Whether the server keeps artifacts (``schedy server --artifacts``); asked once."""
        known = getattr(self, "_keeps_artifacts", None)
        if known is None:
            try:
                status = self._call("GET", _artifacts.ARTIFACT_STORE_PATH, idempotent=True)
            except NotFoundError:  # a server from before artifacts
                status = {}
            known = bool(isinstance(status, dict) and status.get("enabled"))
            self._keeps_artifacts = known
        return known

    def upload_artifact(
        self, experiment: str, job_id: str, filename: str, path: str, sha256: str
    ) -> ArtifactInfo:
        """Stream the local file ``path`` (whose SHA-256 is ``sha256``) to the server as
        the job's artifact ``filename``; the server checks size and hash before keeping it.
        Sent again after a dropped connection (the same bytes again: idempotent)."""
        params = {
            "experiment": experiment,
            "job": job_id,
            "file": filename,
            "sha256": sha256,
            "size": os.path.getsize(path),
        }
        with _open_upload(path) as body:
            stored = self._call(
                "PUT",
                _artifacts.ARTIFACT_PATH,
                params,
                data=body,
                headers={"Content-Type": "application/octet-stream"},
                idempotent=True,
            )
        return _artifact(stored)

    def artifact_info(self, experiment: str, job_id: str, filename: str) -> ArtifactInfo | None:
        """The artifact's size and hash (a HEAD: no bytes travel); None if there is none."""
        params = {"experiment": experiment, "job": job_id, "file": filename}
        response = self._call("HEAD", _artifacts.ARTIFACT_PATH, params, idempotent=True, raw=True)
        response.close()
        if response.status_code == 404:
            return None
        if not response.ok:  # a HEAD's refusal has no body to say why: a GET's has
            return self._artifact_by_get(params)
        return _info_of(response, job_id, filename)

    def _artifact_by_get(self, params: dict[str, Any]) -> ArtifactInfo | None:
        try:
            response = self._call(
                "GET", _artifacts.ARTIFACT_PATH, params, idempotent=True, raw=True
            )
        except NotFoundError:
            return None
        response.close()  # the headers were all we wanted
        return _info_of(response, params["job"], params["file"])

    def download_artifact(
        self, experiment: str, job_id: str, filename: str, target: str, expected: ArtifactInfo
    ) -> None:
        """Stream the artifact into the local file ``target`` and check it is ``expected``
        (size and SHA-256). A connection dropped mid-way is resumed where it stopped
        (``Range``, ``If-Range`` its hash), for ``retry_seconds``; a corrupt or changed
        download raises StorageError (``target`` then holds no usable file)."""
        params = {"experiment": experiment, "job": job_id, "file": filename}
        tag = _artifacts.etag(expected.sha256)
        digest = hashlib.sha256()
        written = 0
        call = self._new_call("GET", _artifacts.ARTIFACT_PATH, idempotent=True)
        pause: Backoff | None = None
        with open(target, "wb") as out:
            while True:
                headers = {"Accept": "application/octet-stream"}
                if written:
                    headers.update({"Range": f"bytes={written}-", "If-Range": tag})
                response = self._call(
                    "GET",
                    _artifacts.ARTIFACT_PATH,
                    params,
                    idempotent=True,
                    call=call,
                    headers=headers,
                    raw=True,
                )
                with response:
                    if response.headers.get("etag") != tag:
                        raise StorageError(
                            f"artifact {filename} of job {job_id} changed on the server while it "
                            "was downloaded (its job saved it again): download it again"
                        )
                    if response.status_code != 206 and written:  # sent whole: start over
                        out.seek(0)
                        out.truncate()
                        digest, written = hashlib.sha256(), 0
                    try:
                        for chunk in response.iter_content(_DOWNLOAD_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                    except _TRANSPORT_ERRORS as error:  # dropped mid-way: resume from here
                        call.failed(_describe(_reason(error)), maybe_applied=False)
                        if pause is None:
                            pause = Backoff(
                                _BACKOFF_FACTOR_S * 2, _BACKOFF_MAX_S, budget=call.remaining()
                            )
                        if pause.wait():
                            continue
                        raise self._failure(error, call) from None
                break
        self._outage.end()
        if written != expected.size or digest.hexdigest() != expected.sha256:
            raise StorageError(
                f"the download of artifact {filename} of job {job_id} is corrupt ({written} "
                f"bytes, SHA-256 {digest.hexdigest()}; expected {expected.size} bytes, "
                f"{expected.sha256}): download it again"
            )

    def list_artifacts(self, experiment: str) -> list[ArtifactInfo]:
        """The experiment's artifacts on the server."""
        found = self._call(
            "GET", _artifacts.ARTIFACTS_PATH, {"experiment": experiment}, idempotent=True
        )
        if not isinstance(found, list):
            raise ServerError(f"{self.url} answered a list of artifacts with {found!r}")
        return [_artifact(entry) for entry in found]

    def delete_artifact(self, experiment: str, job_id: str, filename: str) -> None:
        """Delete one artifact (an admin token's call)."""
        self._delete(
            _artifacts.ARTIFACT_PATH, {"experiment": experiment, "job": job_id, "file": filename}
        )


#: Bytes read from a download at a time.
_DOWNLOAD_CHUNK = 2**20


def _open_upload(path: str) -> Any:
    """The file an upload streams (a seam: a test slows it down to kill a worker mid-way)."""
    return open(path, "rb")


def _artifact(data: Any) -> ArtifactInfo:
    if not isinstance(data, dict):
        raise ServerError(f"a schedy server answered an artifact with {data!r}")
    try:
        return ArtifactInfo(
            str(data["job"]), str(data["file"]), int(data["size"]), str(data["sha256"])
        )
    except (KeyError, TypeError, ValueError):
        raise ServerError(f"a schedy server answered an artifact with {data!r}") from None


def _info_of(response: requests.Response, job_id: str, filename: str) -> ArtifactInfo:
    """An artifact's size and hash from the headers of its GET or HEAD."""
    tag = response.headers.get("etag", "").strip('"')
    length = response.headers.get("content-length", "")
    if not _artifacts.is_sha256(tag) or not length.isdigit():
        raise ServerError(
            f"the schedy server answered artifact {filename} without its size or hash"
        )
    return ArtifactInfo(job_id, filename, int(length), tag)


def _holds(stored: JobRecord, change: _wire.JobChange) -> bool:
    """Whether ``stored`` is what ``change`` writes (as the server stores it)."""
    sent_error = None if change.error is None else change.error.replace("\x00", "\\x00")
    return (
        (change.status is None or stored.status == change.status)
        and (
            change.hyperparameters is None
            or _values.canonical(stored.hyperparameters)
            == _values.canonical(change.hyperparameters)
        )
        and (
            change.results is None
            or _values.canonical(stored.results) == _values.canonical(change.results)
        )
        and (sent_error is None or stored.error == sent_error)
    )


def _cut_off(error: Exception) -> bool:
    """Whether ``error`` is an answer lost while its body was read.

    urllib3 retries what fails before it hands an answer over, and wraps what
    it gave up on in a MaxRetryError; an error reading the body comes later,
    from requests, as a ChunkedEncodingError or a ConnectionError around the
    read's own error."""
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return True
    return isinstance(error, requests.ConnectionError) and isinstance(
        _first_arg(error), (ProtocolError, ReadTimeoutError)
    )


def _first_arg(error: BaseException) -> object:
    return error.args[0] if error.args else None


def _reason(error: BaseException) -> BaseException:
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


def _query_value(value: Any) -> Any:
    """A query value as requests can send it: text with no UTF-8 form (a lone
    surrogate) goes as its surrogate-escaped bytes, which the server reads as
    a name nothing has -- the answer any backend gives such a name -- instead
    of a UnicodeEncodeError raised here."""
    if isinstance(value, str) and not value.isascii():
        return value.encode("utf-8", "surrogatepass")
    return value
