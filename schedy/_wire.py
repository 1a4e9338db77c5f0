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
  class the server-side storage raised;
* the limits both sides know: what a request field may hold (each body
  field's rule is checked when the body is built -- on the client before
  anything is sent, on the server when it is read -- and is the field's
  JSON Schema at ``/docs``, so what is documented is what is enforced), the
  largest page (:data:`MAX_PAGE`), and the deepest body (:data:`MAX_BODY_DEPTH`);
* tokens: ``Authorization: Bearer <secret>``, a secret stored and looked up
  only as its SHA-256 (:func:`hash_secret`), new secrets from
  :func:`new_secret`, and the answers' shapes (``Hello``, ``Renewed``,
  ``Done``, ``ErrorAnswer``) the server documents.

This module sits below the storage backends and the server and imports only
the records, the errors and the JSON value rules (no FastAPI, no requests),
so either side can use it without the other installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, TypeVar

from . import _values
from ._records import (
    MAX_LEASE_SECONDS,
    MAX_NAME_LENGTH,
    Claim,
    ExperimentRecord,
    ExperimentStatus,
    JobRecord,
    JobStatus,
    JobUpdate,
    MemberRecord,
)
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
    "DEFAULT_MAX_BODY_BYTES",
    "ERRORS",
    "FORBIDDEN_STATUS",
    "MAX_BODY_DEPTH",
    "MAX_PAGE",
    "MEDIA_TYPE",
    "MIN_SECRET_LENGTH",
    "ClaimRequest",
    "Done",
    "ErrorAnswer",
    "ErrorDetail",
    "ExperimentChange",
    "Hello",
    "JobChange",
    "LeaseRenewal",
    "NewExperiment",
    "NewJob",
    "Renewed",
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
    "hash_secret",
    "hello",
    "is_hello",
    "new_secret",
]

#: Every endpoint's path starts with this; a new, incompatible API gets a new one.
API_PREFIX = "/api/v1"
#: What ``/health`` and ``/session`` answer as ``"api"``.
API_VERSION = 1
MEDIA_TYPE = "application/json"
#: The most records one call returns or asks for (``limit``, ``k``, ``top_k``).
MAX_PAGE = 10_000
#: The largest request body a server takes unless told otherwise
#: (``schedy server --max-body-mb``): far above any job, whose values are JSON.
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
#: How deep a request body may nest: the values it carries may nest
#: ``_values.MAX_DEPTH`` levels, and the body wraps them in a few more.
MAX_BODY_DEPTH = 100
#: The status of a valid token whose role may not make the call; it comes as an
#: ``AuthenticationError`` like a refused token (401), with a message saying
#: which role the call needs.
FORBIDDEN_STATUS = 403
#: The shortest secret a server accepts as its bootstrap token.
MIN_SECRET_LENGTH = 16


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


def encode_error(
    error: BaseException, status: int | None = None, message: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body that carry ``error`` (``ServerError`` if unknown).

    ``status`` replaces the table's (a 403 ``AuthenticationError``, a 413
    ``ValueError``: the client raises by name, the status is for HTTP);
    ``message`` replaces ``str(error)`` (the server's answer to a bug)."""
    entry = error_entry(error) or _SERVER_ERROR
    text = str(error) if message is None else message
    return status or entry.status, dataclasses.asdict(ErrorAnswer(ErrorDetail(entry.name, text)))


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
    return dataclasses.asdict(Renewed(renewed))


def decode_renewed(data: Any) -> bool:
    return bool(_object(data, ("renewed",))["renewed"])


def hello(version: str) -> dict[str, Any]:
    """What ``/health`` and ``/session`` answer: tells a schedy server from anything else."""
    return dataclasses.asdict(Hello(version, API_VERSION))


def is_hello(data: Any) -> bool:
    return isinstance(data, dict) and "schedy" in data


# -- answers without a record ---------------------------------------------------------
# The shapes of the answers that are not records, as the server documents
# them (its OpenAPI response models) and the encoders above build them.


@dataclass
class Hello:
    """``/health`` and ``/session``: the server's schedy version and API version."""

    schedy: str
    api: int


@dataclass
class Renewed:
    """``POST /lease``: whether the lease was extended (False: it was lost)."""

    renewed: bool


@dataclass
class Done:
    """A change made, with nothing to tell: ``{}``."""


@dataclass
class ErrorDetail:
    """A failure: the public class the client raises, and why."""

    type: str
    message: str


@dataclass
class ErrorAnswer:
    """Every failure's body, whatever its status."""

    error: ErrorDetail


# -- tokens ----------------------------------------------------------------------
def hash_secret(secret: str) -> str:
    """How a token's secret is stored and looked up: its SHA-256, in hex.

    A stolen database then holds no usable token; a secret is high-entropy
    (:func:`new_secret`), so a plain hash is enough (no salt, no stretching)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    """A new token secret: 32 random bytes, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


# -- request field rules ----------------------------------------------------------
def _spaces() -> str:
    """Python's whitespace (``str.isspace``, none beyond U+3000), for a regex class."""
    return "".join(f"\\u{code:04x}" for code in range(0x3001) if chr(code).isspace())


@dataclass(frozen=True)
class _Text:
    """A string field's rule: its length in characters, no NUL (PostgreSQL
    cannot store one), and not blank when it names something; ``what`` names
    the field in errors (default: its own name)."""

    min_length: int = 0
    max_length: int | None = None
    not_blank: bool = False
    what: str | None = None

    def schema(self) -> dict[str, Any]:
        found: dict[str, Any] = {"minLength": self.min_length}
        if self.max_length is not None:
            found["maxLength"] = self.max_length
        if self.not_blank:
            found["pattern"] = f"^[^\\x00]*[^\\x00{_spaces()}][^\\x00]*$"
        else:
            found["pattern"] = "^[^\\x00]*$"
        return found

    def check(self, value: Any, name: str) -> None:
        what = self.what or name
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string, not {type(value).__name__}")
        if len(value) < self.min_length or (
            self.max_length is not None and len(value) > self.max_length
        ):
            most = "" if self.max_length is None else f" and at most {self.max_length}"
            raise ValueError(
                f"{what} must have at least {self.min_length}{most} characters, not {len(value)}"
            )
        if "\x00" in value:
            raise ValueError(f"{what} may not contain a NUL character")
        if self.not_blank and not value.strip():
            raise ValueError(f"{what} may not be blank")


@dataclass(frozen=True)
class _Number:
    """A number field's rule: finite, above ``above`` and at most ``most``."""

    above: float
    most: float
    unit: str = ""

    def schema(self) -> dict[str, Any]:
        return {"exclusiveMinimum": self.above, "maximum": self.most}

    def check(self, value: Any, name: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, not {type(value).__name__}")
        if not (math.isfinite(value) and self.above < value <= self.most):
            raise ValueError(
                f"{name} must be a finite number > {self.above:g} and at most "
                f"{self.most:.0f}{self.unit}, not {value!r}"
            )


@dataclass(frozen=True)
class _Choice:
    """A string field that is one of ``values``."""

    values: tuple[str, ...]
    hint: str = ""

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.values)}

    def check(self, value: Any, name: str) -> None:
        if value not in self.values:
            raise ValueError(
                f"{name} must be one of {', '.join(self.values)}, not {value!r}{self.hint}"
            )


_Rule = _Text | _Number | _Choice
_NAME = _Text(1, MAX_NAME_LENGTH, not_blank=True, what="an experiment name")
_KIND = _Text(1, 32, what="an experiment kind")
_LEASE = _Number(0, MAX_LEASE_SECONDS, " (a week)")
_REQUEST_ID = _Text(1, 64, what="a claim's request id")
_LEASE_TOKEN = _Text(1, 64, what="a lease token")
_JOB_STATUSES = _Choice(tuple(status.value for status in JobStatus))
_NEW_JOB_STATUSES = _Choice(
    tuple(status.value for status in JobStatus if status is not JobStatus.RUNNING),
    ": a job cannot be added RUNNING, nobody would hold its lease (add it QUEUED, and "
    "next_job() hands it out with one)",
)
_EXPERIMENT_STATUSES = _Choice(tuple(status.value for status in ExperimentStatus))


class _Strict:
    """``Annotated`` metadata making pydantic take a field's type as it is: a
    number field then refuses ``true`` and ``"5"`` instead of reading 1.0 and
    5.0 (the JSON Schema says number). Duck-typed: nothing here imports pydantic."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return {**handler(source), "strict": True}


_STRICT = _Strict()
#: A number of seconds as a body carries it: a JSON number, never a bool or a string.
Seconds = Annotated[float, _STRICT]


def _rule(rule: _Rule) -> dict[str, _Rule]:
    """The metadata of a dataclass field checked (and documented) by ``rule``."""
    return {"rule": rule}


class _Checked:
    """A request body whose fields' rules are checked when it is built, and are
    its JSON Schema (pydantic, hence FastAPI, calls ``__get_pydantic_json_schema__``;
    nothing here imports either). ``None`` always passes: it means "not given"."""

    _rules: ClassVar[dict[str, _Rule]]

    def __init_subclass__(cls, **options: Any) -> None:
        super().__init_subclass__(**options)
        cls._rules = {}

    def __post_init__(self) -> None:
        rules = type(self)._rules
        if not rules:
            type(self)._rules = rules = {
                item.name: item.metadata["rule"]
                for item in dataclasses.fields(self)  # type: ignore[arg-type]
                if "rule" in item.metadata
            }
        for name, rule in rules.items():
            value = getattr(self, name)
            if value is not None:
                rule.check(value, name)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]
            rule = item.metadata.get("rule")
            if rule is None:
                continue
            found = target["properties"][item.name]
            options = found.get("anyOf")  # an optional field: the non-null choice
            into = (
                next((o for o in options if o.get("type") != "null"), found) if options else found
            )
            into.update(rule.schema())
        return schema


# -- request bodies ----------------------------------------------------------------
# Plain dataclasses: FastAPI validates and documents them as request bodies,
# and the client sends ``body(instance)``. Hyperparameters and results are
# normalized by the client's constructors (``of``), so an unstorable value
# raises a TypeError naming its key before anything is sent.


@dataclass
class NewExperiment(_Checked):
    """``POST /experiments``: an experiment to create (an
    :class:`~schedy._records.ExperimentRecord`'s fields, checked)."""

    name: str = field(metadata=_rule(_NAME))
    kind: str = field(metadata=_rule(_KIND))
    status: str = field(metadata=_rule(_EXPERIMENT_STATUSES))
    config: dict[str, Any]

    def record(self) -> ExperimentRecord:
        return ExperimentRecord(self.name, self.kind, self.status, self.config)


@dataclass
class ExperimentChange(_Checked):
    """``PUT /experiment``: an experiment's new status and configuration."""

    status: str = field(metadata=_rule(_EXPERIMENT_STATUSES))
    config: dict[str, Any]


@dataclass
class NewJob(_Checked):
    """``POST /jobs``: a job to add (not RUNNING: a running job is one a worker claimed)."""

    status: str = field(default=JobStatus.QUEUED.value, metadata=_rule(_NEW_JOB_STATUSES))
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
class JobChange(_Checked):
    """``PATCH /job``: a :class:`~schedy._records.JobUpdate` (``None`` leaves a
    field as is) and the lease token of the worker holding the job."""

    status: str | None = field(default=None, metadata=_rule(_JOB_STATUSES))
    hyperparameters: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    error: str | None = None
    lease_token: str | None = field(default=None, metadata=_rule(_LEASE_TOKEN))

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
class ClaimRequest(_Checked):
    """``POST /claim``: how long the claimed job's lease lasts, in seconds, and
    the claim's request id (a retried claim with the same id gets the same job)."""

    lease_seconds: Seconds = field(metadata=_rule(_LEASE))
    request_id: str | None = field(default=None, metadata=_rule(_REQUEST_ID))


@dataclass
class LeaseRenewal(_Checked):
    """``POST /lease``: the lease to extend and by how long, in seconds."""

    lease_token: str = field(metadata=_rule(_LEASE_TOKEN))
    lease_seconds: Seconds = field(metadata=_rule(_LEASE))


RequestBody = NewExperiment | ExperimentChange | NewJob | JobChange | ClaimRequest | LeaseRenewal


def body(request: RequestBody) -> dict[str, Any]:
    """A request body as the JSON object sent."""
    return dataclasses.asdict(request)
