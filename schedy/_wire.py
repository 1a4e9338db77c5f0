"""The HTTP contract between ``schedy server`` and its client, written once.

``schedy.server._app`` (FastAPI) and ``schedy.storage._http`` (requests)
both import what is here instead of each spelling it out, so the two sides
cannot drift apart: a field renamed, an error class added or a status code
changed on one side only would otherwise pass every test of that side and
fail only in production, between versions. What travels:

* the API prefix (:data:`API_PREFIX`) the endpoints sit under;
* bodies as JSON text written by :func:`schedy._values.dumps` (UTF-8), so
  NaN and +/-inf results survive the trip as they do in the database
  (:func:`encode`, :func:`decode`);
* records (jobs, experiments, members, claims) as JSON objects of their
  fields (``encode_*``); the client reads them back with ``decode_*``, which
  ignore fields they do not know (a newer server may add some) and raise
  :class:`~schedy.errors.ServerError` for an answer that is not a record;
* request bodies as the dataclasses below: the server takes them as its
  FastAPI body types (so they are also the OpenAPI schema at ``/docs``), the
  client builds and sends the same classes;
* failures as ``{"error": {"type": NAME, "message": ...}}`` with an HTTP
  status, both from one table, :data:`ERRORS`, so the client raises the
  class the server-side storage raised.

This module sits below the storage backends and the server and imports only
the records, the errors and the JSON value rules (no FastAPI, no requests),
so either side can use it without the other installed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _values
from ._records import Claim, ExperimentRecord, JobRecord, JobStatus, JobUpdate, MemberRecord
from .errors import (
    AuthenticationError,
    NotFoundError,
    ResourceExistsError,
    SchemaVersionError,
    ServerError,
    StorageError,
    UnsafeUpdateError,
)

__all__ = [
    "API_PREFIX",
    "API_VERSION",
    "ERRORS",
    "MEDIA_TYPE",
    "ClaimRequest",
    "ExperimentChange",
    "JobChange",
    "LeaseRenewal",
    "NewJob",
    "RequestBody",
    "WireError",
    "body",
    "decode",
    "decode_claim",
    "decode_error",
    "decode_experiment",
    "decode_experiments",
    "decode_job",
    "decode_jobs",
    "decode_members",
    "decode_renewed",
    "encode",
    "encode_claim",
    "encode_error",
    "encode_experiment",
    "encode_job",
    "encode_member",
    "encode_renewed",
    "error_entry",
    "hello",
    "is_hello",
]

#: Every endpoint's path starts with this; a new, incompatible API gets a new one.
API_PREFIX = "/api/v1"
#: What ``/health`` and ``/session`` answer as ``"api"``.
API_VERSION = 1
MEDIA_TYPE = "application/json"


# -- bodies ----------------------------------------------------------------------
def encode(value: Any) -> bytes:
    """A body: JSON written by ``_values.dumps`` (NaN and infinities stay numbers)."""
    return _values.dumps(value).encode("utf-8")


def decode(content: bytes) -> Any:
    """A body written by :func:`encode`. UTF-8 by the JSON spec, decoded as such
    (guessing the charset from the bytes is slow on every page of jobs).
    ValueError (UnicodeDecodeError included) when it is not such JSON."""
    return _values.loads(content.decode("utf-8"))


# -- errors ----------------------------------------------------------------------
@dataclass(frozen=True)
class WireError:
    """One error the server sends: the class raised on both sides, the type
    name that travels, and the HTTP status it comes with."""

    kind: type[Exception]
    name: str
    status: int


#: Most specific first: the server sends the first entry the error is an
#: instance of, so a private subclass (say, a storage's ``_CommitLost``)
#: travels as its public base, and the client only ever meets these names.
#: Anything else is sent as ``ServerError`` (500).
ERRORS: tuple[WireError, ...] = (
    WireError(NotFoundError, "NotFoundError", 404),
    WireError(ResourceExistsError, "ResourceExistsError", 409),
    WireError(UnsafeUpdateError, "UnsafeUpdateError", 409),
    WireError(SchemaVersionError, "SchemaVersionError", 503),
    WireError(StorageError, "StorageError", 503),
    WireError(AuthenticationError, "AuthenticationError", 401),
    WireError(ServerError, "ServerError", 500),
    WireError(ValueError, "ValueError", 400),
    WireError(TypeError, "TypeError", 400),
)
_SERVER_ERROR = next(entry for entry in ERRORS if entry.kind is ServerError)
_BY_NAME = {entry.name: entry.kind for entry in ERRORS}


def error_entry(error: BaseException) -> WireError | None:
    """The table's entry for ``error`` (its most specific public class), if any."""
    return next((entry for entry in ERRORS if isinstance(error, entry.kind)), None)


def encode_error(error: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body that carry ``error`` (``ServerError`` if unknown)."""
    entry = error_entry(error) or _SERVER_ERROR
    return entry.status, {"error": {"type": entry.name, "message": str(error)}}


def decode_error(status: int, payload: Any) -> Exception | None:
    """The exception a failed answer carries, or None if it carries no schedy error
    (then it did not come from a schedy server). Unknown names are ServerError."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    message = str(error.get("message") or f"HTTP {status}")
    name = error.get("type")
    kind = _BY_NAME.get(name, ServerError) if isinstance(name, str) else ServerError
    return kind(message)


# -- records (answers) -------------------------------------------------------------
_Record = TypeVar("_Record")


def _object(data: Any, required: Iterable[str] = ()) -> dict[str, Any]:
    """``data`` as a JSON object holding ``required``; ServerError otherwise."""
    if not isinstance(data, dict):
        raise ServerError(f"the schedy server answered {type(data).__name__}, not an object")
    missing = [name for name in required if name not in data]
    if missing:
        raise ServerError(f"the schedy server's answer lacks {', '.join(missing)}")
    return data


def _record(kind: Callable[..., _Record], names: Iterable[str], data: Any) -> _Record:
    """``kind(**data)`` from the fields it knows; ServerError if that is no record."""
    found = _object(data)
    try:
        return kind(**{name: found[name] for name in names if name in found})
    except TypeError as error:  # a field missing
        raise ServerError(f"the schedy server answered an incomplete record: {error}") from None


def _items(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise ServerError(f"the schedy server answered {type(data).__name__}, not a list")
    return data


_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))
_EXPERIMENT_FIELDS = tuple(f.name for f in dataclasses.fields(ExperimentRecord))


def encode_job(record: JobRecord) -> dict[str, Any]:
    return dataclasses.asdict(record)


def decode_job(data: Any) -> JobRecord:
    return _record(JobRecord, _JOB_FIELDS, data)


def decode_jobs(data: Any) -> list[JobRecord]:
    return [decode_job(item) for item in _items(data)]


def encode_experiment(record: ExperimentRecord) -> dict[str, Any]:
    """An experiment: also the body that creates one (``POST /experiments``)."""
    return dataclasses.asdict(record)


def decode_experiment(data: Any) -> ExperimentRecord:
    return _record(ExperimentRecord, _EXPERIMENT_FIELDS, data)


def decode_experiments(data: Any) -> list[ExperimentRecord]:
    return [decode_experiment(item) for item in _items(data)]


def encode_member(member: MemberRecord) -> dict[str, Any]:
    return member._asdict()


def decode_members(data: Any) -> list[MemberRecord]:
    return [_record(MemberRecord, MemberRecord._fields, item) for item in _items(data)]


def encode_claim(claim: Claim) -> dict[str, Any]:
    job = None if claim.job is None else encode_job(claim.job)
    return {"job": job, "wait": claim.wait, "reason": claim.reason}


def decode_claim(data: Any) -> Claim:
    found = _object(data, ("job", "wait"))
    job = found["job"]
    return Claim(
        None if job is None else decode_job(job),
        wait=bool(found.get("wait")),
        reason=str(found.get("reason") or ""),
    )


def encode_renewed(renewed: bool) -> dict[str, Any]:
    return {"renewed": renewed}


def decode_renewed(data: Any) -> bool:
    return bool(_object(data, ("renewed",))["renewed"])


def hello(version: str) -> dict[str, Any]:
    """What ``/health`` and ``/session`` answer: tells a schedy server from anything else."""
    return {"schedy": version, "api": API_VERSION}


def is_hello(data: Any) -> bool:
    return isinstance(data, dict) and "schedy" in data


# -- request bodies ----------------------------------------------------------------
# Plain dataclasses: FastAPI validates and documents them as request bodies,
# and the client sends ``body(instance)``. Hyperparameters and results are
# normalized by the client's constructors (``of``), so an unstorable value
# raises a TypeError naming its key before anything is sent.


@dataclass
class ExperimentChange:
    """``PUT /experiment``: an experiment's new status and configuration."""

    status: str
    config: dict[str, Any]


@dataclass
class NewJob:
    """``POST /jobs``: a job to add."""

    status: str = JobStatus.QUEUED.value
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, status: str, hyperparameters: Any, results: Any) -> NewJob:
        return cls(
            status=status,
            hyperparameters=_values.normalize_mapping(hyperparameters, "hyperparameters"),
            results=_values.normalize_mapping(results, "results"),
        )


@dataclass
class JobChange:
    """``PATCH /job``: a :class:`~schedy._records.JobUpdate` (``None`` leaves a
    field as is) and the lease token of the worker holding the job."""

    status: str | None = None
    hyperparameters: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    error: str | None = None
    lease_token: str | None = None

    @classmethod
    def of(cls, update: JobUpdate, lease_token: str | None) -> JobChange:
        return cls(
            status=update.status,
            hyperparameters=None
            if update.hyperparameters is None
            else _values.normalize_mapping(update.hyperparameters, "hyperparameters"),
            results=None
            if update.results is None
            else _values.normalize_mapping(update.results, "results"),
            error=update.error,
            lease_token=lease_token,
        )

    def update(self) -> JobUpdate:
        return JobUpdate(
            status=self.status,
            hyperparameters=self.hyperparameters,
            results=self.results,
            error=self.error,
        )


@dataclass
class ClaimRequest:
    """``POST /claim``: how long the claimed job's lease lasts, in seconds, and
    the claim's request id (a retried claim with the same id gets the same job)."""

    lease_seconds: float
    request_id: str | None = None


@dataclass
class LeaseRenewal:
    """``POST /lease``: the lease to extend and by how long, in seconds."""

    lease_token: str
    lease_seconds: float


RequestBody = ExperimentChange | NewJob | JobChange | ClaimRequest | LeaseRenewal


def body(request: RequestBody) -> dict[str, Any]:
    """A request body as the JSON object sent."""
    return dataclasses.asdict(request)
