"""The FastAPI application: one endpoint per ``Storage`` method.

The wire format -- the API prefix, JSON bodies that keep NaN and +/-inf,
records, request bodies and their rules, the answers and the error table --
is ``schedy._wire``, which the client (``schedy.storage._http``) imports
too: this module only routes requests to the storage and answers in that
format, so the two sides cannot disagree. Experiment names and job ids
travel as query parameters, not path segments: a name may hold any
character (``/`` too). A failure comes back as the error table's type name
and status, and the client raises the same class the storage raised.

Before a request reaches a route it passes ``_guard.Guard`` (tokens and
roles, body size and depth, the last-resort 500); each route below states
the least role that may call it, its answer's model and the failures it
may meet, which is what the OpenAPI document at ``/docs`` says.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import ssl
import typing
from collections.abc import Callable
from typing import Annotated, Any

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"schedy server needs FastAPI and uvicorn ({error}): pip install 'schedy[server]'"
    ) from None

from .. import __version__, _wire
from .._records import (
    Claim,
    ExperimentRecord,
    JobRecord,
    MemberRecord,
    TokenRole,
    is_valid_name,
)
from ..db import SchedyDB, _sqlite_file
from ..errors import NotFoundError, SchedyError
from ..storage._base import Storage
from ..storage._http import HTTPStorage
from . import _artifacts
from ._artifacts import DEFAULT_KEEP_TOP_K, DEFAULT_MAX_ARTIFACT_BYTES, ArtifactStore
from ._auth import DEFAULT_CACHE_SECONDS, Authenticator
from ._dashboard import add_dashboard, is_dashboard_path
from ._guard import DEFAULT_MAX_BODY_BYTES, Access, Guard

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "serve"]

logger = logging.getLogger(__name__)


class JSONText(JSONResponse):
    """A body in the wire's JSON (``_wire.encode``): NaN and infinities stay numbers.
    (A JSONResponse, so that FastAPI documents the route's model as its answer.)"""

    media_type = _wire.MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return _wire.encode(content)


def _error(
    error: BaseException,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    scrub: Callable[[str], str] = str,
) -> JSONText:
    """``error`` as the wire's error table says: its public name and status."""
    code, body = _wire.encode_error(error, status, scrub(str(error)))
    return JSONText(body, status_code=code, headers=headers)


def _scrubber(storage: Storage) -> Callable[[str], str]:
    """What takes the store's whereabouts out of a message: its URL (with or
    without a password) and its SQLite file become "the server's database". A
    storage error says where the store is for the person who opened it; a
    client of the server has no business knowing the path or the host."""
    names = {storage.url}
    safe = getattr(storage, "_safe_url", None)
    if callable(safe):
        names.add(str(safe()))
    path = _sqlite_file(storage.url)
    if path:
        names.update({path, os.path.abspath(path), os.path.realpath(path)})
    ordered = sorted((name for name in names if len(name) > 1), key=len, reverse=True)

    def scrub(text: str) -> str:
        for name in ordered:
            text = text.replace(name, "the server's database")
        return text

    return scrub


def _sql_storage(store: Storage | SchedyDB | str) -> Storage:
    """The storage to serve: given, a SchedyDB's, or opened from a database URL."""
    if isinstance(store, str):
        store = SchedyDB(store)
    storage = store._storage if isinstance(store, SchedyDB) else store
    if not isinstance(storage, Storage) or isinstance(storage, HTTPStorage):
        raise ValueError(
            f"a schedy server serves a database (sqlite:///… or postgresql://…), not {store!r}"
        )
    return storage


#: What each failure status means, as the OpenAPI document says it.
_STATUSES = {
    400: "Invalid request: a parameter or body field breaks its rule, the body is not JSON "
    "or nests too deep, or the store refuses a value (`ValueError`, `TypeError`)",
    401: "No token, or one the server does not know or that was revoked (`AuthenticationError`)",
    403: "The token is valid, but its role may not make this call (`AuthenticationError`)",
    404: "No such experiment or job (`NotFoundError`)",
    409: "A conflict: the name is taken (`ResourceExistsError`), or the job's lease was lost "
    "(`UnsafeUpdateError`)",
    413: "The body is larger than the server's limit (`ValueError`)",
    500: "An internal error; the server logged the details (`ServerError`)",
    503: "The store cannot be reached or used (`StorageError`, `SchemaVersionError`)",
}

# Names and ids are looked up as given: one no store could hold (too long,
# a NUL) names nothing, so it is a 404 like any unknown one, on every backend.
ExperimentName = Annotated[str, Query(description="the experiment's name")]
JobId = Annotated[str, Query(description="the job's id")]
_PAGE = {"ge": 0, "le": _wire.MAX_PAGE}


def create_app(
    store: Storage | SchedyDB | str,
    token: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    token_cache_seconds: float = DEFAULT_CACHE_SECONDS,
    artifacts: str | ArtifactStore | None = None,
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    artifact_keep_top_k: int | None = DEFAULT_KEEP_TOP_K,
) -> FastAPI:
    """The ASGI application serving ``store`` (a database URL or a ``SchedyDB``).

    ``token`` is the bootstrap token (admin; at least 16 characters,
    surrounding whitespace ignored); tokens made with ``schedy token create``
    are honoured too. With either, every call but ``/api/v1/health`` -- the
    docs included -- needs ``Authorization: Bearer <token>`` of a role allowed
    to make it; with neither, the application is open (``serve`` then only
    listens on loopback). A request body may hold ``max_body_bytes`` at most;
    a stored token's lookup is trusted ``token_cache_seconds`` (0: every
    request asks the store). ``artifacts`` (a folder or an fsspec URL) keeps
    the checkpoints of workers that share no file system, each at most
    ``max_artifact_bytes``, pruned after each upload down to what a job can
    need and the ``artifact_keep_top_k`` best (None: never pruned); see
    ``_artifacts``.
    """
    storage = _sql_storage(store)
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise ValueError(f"max_body_bytes must be a whole number of bytes, not {max_body_bytes!r}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be at least 1, not {max_body_bytes}")
    authenticator = Authenticator(storage, token, token_cache_seconds)
    secured = authenticator.required
    app = FastAPI(
        title="schedy",
        version=__version__,
        description=_DESCRIPTION,
        default_response_class=JSONText,
    )
    app.state.token_required = secured
    rules: dict[tuple[str, str], Access] = {("GET", _wire.API_PREFIX + "/health"): Access(None, "")}
    for path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"):
        rules["GET", path] = Access(TokenRole.READ, "read the API's documentation")
    scrub = _scrubber(storage)
    app.add_middleware(
        Guard,
        authenticator=authenticator,
        rules=rules,
        max_body_bytes=max_body_bytes,
        scrub=scrub,
        pages=is_dashboard_path,
        streamed={
            ("PUT", _wire.API_PREFIX + _artifacts.ARTIFACT_PATH): (
                max_artifact_bytes,
                "--max-artifact-size",
            )
        },
    )

    @app.exception_handler(SchedyError)
    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def known_error(request: Request, error: Exception) -> Response:
        # Named by the public class it is (a private subclass travels as its
        # base); one the table lacks (NoJobError, say) is a ServerError.
        return _error(error, scrub=scrub)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        return _error(ValueError(f"invalid request to the schedy server: {_problems(error)}"))

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, error: StarletteHTTPException) -> Response:
        # The router's 404 and 405, and FastAPI's 400 for a body it could not parse.
        where = f"{request.method} {request.url.path}"
        failure: Exception
        if error.status_code == 404:
            failure = NotFoundError(f"the schedy server has no endpoint {where}")
        elif error.status_code == 405:
            failure = ValueError(f"{request.url.path} does not take {request.method}")
        elif error.status_code == 400:
            failure = ValueError("the request body is not valid JSON (UTF-8)")
        else:
            failure = ValueError(f"the schedy server cannot answer {where}")
        return _error(failure, error.status_code, getattr(error, "headers", None))

    def route(
        method: str,
        path: str,
        role: TokenRole,
        action: str,
        answer: Any,
        *fails: int,
        status_code: int = 200,
        raw: bool = False,
        responses: dict[int | str, dict[str, Any]] | None = None,
        openapi_extra: dict[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Any]:
        """``method path``, open to ``role`` and above, answering ``answer``
        (its response model) or one of the failures every route may meet
        and ``fails``. A ``raw`` route answers something other than JSON
        (artifact bytes), which ``responses`` documents; ``openapi_extra``
        is what its signature cannot say (a body it streams itself)."""
        full = _wire.API_PREFIX + path
        rules[method, full] = Access(role, action)
        statuses = {400, 413, 500, 503, *fails}
        if secured:
            statuses.add(401)
            if role is not TokenRole.READ:
                statuses.add(_wire.FORBIDDEN_STATUS)
        # A plain Response has no media type: FastAPI then documents no JSON for
        # the success, and the failures stay the error JSON.
        raw_answer: dict[str, Any] = {"response_class": Response} if raw else {}
        return app.api_route(
            full,
            methods=[method],
            response_model=answer,
            status_code=status_code,
            responses={**_failures(statuses), **(responses or {})},
            description=f"Needs a token of role **{role}** or above.",
            openapi_extra=openapi_extra,
            **raw_answer,
        )

    @app.get(
        _wire.API_PREFIX + "/health",
        response_model=_wire.Hello,
        responses=_failures({400, 413, 500}),
    )
    def health() -> Any:
        """Open to all: lets a client tell a schedy server from anything else."""
        return JSONText(_wire.hello(__version__))

    @route("GET", "/session", TokenRole.READ, "check a token", _wire.Hello)
    def session() -> Any:
        """Checks the token: clients call it once, so a wrong one fails at SchedyDB()."""
        return JSONText(_wire.hello(__version__))

    kept = _artifacts.open_store(artifacts) if isinstance(artifacts, str) else artifacts
    app.state.artifacts = _artifacts.install(
        route, storage, kept, max_bytes=max_artifact_bytes, keep_top_k=artifact_keep_top_k
    )

    # -- experiments -----------------------------------------------------------
    @route("GET", "/experiments", TokenRole.READ, "list experiments", list[ExperimentRecord])
    def list_experiments() -> Any:
        """Every experiment, oldest first."""
        return JSONText([_wire.encode_experiment(r) for r in storage.list_experiments()])

    @route(
        "POST",
        "/experiments",
        TokenRole.ADMIN,
        "create experiments",
        _wire.Done,
        409,
        status_code=201,
    )
    def create_experiment(body: _wire.NewExperiment) -> Any:
        """Creates an experiment (409 if the name is taken)."""
        storage.create_experiment(body.record())
        return JSONText({}, status_code=201)

    @route("GET", "/experiment", TokenRole.READ, "read experiments", ExperimentRecord, 404)
    def get_experiment(name: ExperimentName) -> Any:
        """One experiment."""
        return JSONText(_wire.encode_experiment(storage.get_experiment(name)))

    @route("PUT", "/experiment", TokenRole.ADMIN, "change experiments", _wire.Done, 404)
    def update_experiment(name: ExperimentName, body: _wire.ExperimentChange) -> Any:
        """Replaces an experiment's status and configuration."""
        storage.update_experiment(name, body.status, body.config)
        return JSONText({})

    @route("DELETE", "/experiment", TokenRole.ADMIN, "delete experiments", _wire.Done, 404)
    def delete_experiment(name: ExperimentName) -> Any:
        """Deletes an experiment, all its jobs and their artifacts."""
        storage.delete_experiment(name)
        app.state.artifacts.forget(name)
        return JSONText({})

    # -- jobs ------------------------------------------------------------------
    @route("POST", "/jobs", TokenRole.WORKER, "add jobs", JobRecord, 404, status_code=201)
    def add_job(experiment: ExperimentName, body: _wire.NewJob) -> Any:
        """Adds a job by hand (a queued one is handed out first)."""
        record = storage.add_job(experiment, body.status, body.hyperparameters, body.results)
        return JSONText(_wire.encode_job(record), status_code=201)

    @route("GET", "/jobs", TokenRole.READ, "list jobs", list[JobRecord], 404)
    def list_jobs(
        experiment: ExperimentName,
        after: Annotated[str | None, Query(description="the last job of the previous page")] = None,
        limit: Annotated[int, Query(description="the page's size", ge=1, le=_wire.MAX_PAGE)] = (
            1000
        ),
    ) -> Any:
        """One page of jobs in creation order, starting after job ``after``."""
        if after is not None and not is_valid_name(after):
            # No job has such an id (PostgreSQL could not even compare a NUL):
            # not found, as the storage says of any unknown one.
            storage.get_experiment(experiment)
            raise NotFoundError(f"experiment {experiment!r} has no job {after!r}")
        found = storage.list_jobs(experiment, after=after, limit=limit)
        return JSONText([_wire.encode_job(record) for record in found])

    @route("GET", "/job", TokenRole.READ, "read jobs", JobRecord, 404)
    def get_job(experiment: ExperimentName, id: JobId) -> Any:
        """One job."""
        return JSONText(_wire.encode_job(storage.get_job(experiment, id)))

    @route("PATCH", "/job", TokenRole.WORKER, "report on jobs", JobRecord, 404, 409)
    def update_job(experiment: ExperimentName, id: JobId, body: _wire.JobChange) -> Any:
        """Writes a job back; with ``lease_token``, only while that lease holds (409)."""
        record = storage.update_job(experiment, id, body.update(), lease_token=body.lease_token)
        return JSONText(_wire.encode_job(record))

    @route("DELETE", "/job", TokenRole.ADMIN, "delete jobs", _wire.Done, 404)
    def delete_job(experiment: ExperimentName, id: JobId) -> Any:
        """Deletes one job."""
        storage.delete_job(experiment, id)
        return JSONText({})

    # -- scheduling ------------------------------------------------------------
    @route("POST", "/claim", TokenRole.WORKER, "claim jobs", Claim, 404)
    def claim_job(experiment: ExperimentName, body: _wire.ClaimRequest) -> Any:
        """Decides and claims the next job, leased to the caller."""
        claim = storage.claim_job(experiment, body.lease_seconds, body.request_id)
        return JSONText(_wire.encode_claim(claim))

    @route("POST", "/lease", TokenRole.WORKER, "renew leases", _wire.Renewed, 404)
    def renew_lease(experiment: ExperimentName, id: JobId, body: _wire.LeaseRenewal) -> Any:
        """Extends a held lease; ``renewed`` is false when it was lost."""
        renewed = storage.renew_lease(experiment, id, body.lease_token, body.lease_seconds)
        return JSONText(_wire.encode_renewed(renewed))

    @route("GET", "/jobs-in-use", TokenRole.READ, "list jobs", list[JobRecord], 404)
    def jobs_in_use(
        experiment: ExperimentName,
        top_k: Annotated[int, Query(description="how many best jobs to keep", **_PAGE)] = 0,
    ) -> Any:
        """The jobs whose checkpoints must be kept."""
        return JSONText([_wire.encode_job(r) for r in storage.jobs_in_use(experiment, top_k)])

    @route("GET", "/top-jobs", TokenRole.READ, "list jobs", list[JobRecord], 404)
    def top_jobs(
        experiment: ExperimentName,
        k: Annotated[int, Query(description="how many", **_PAGE)] = 1,
    ) -> Any:
        """The ``k`` best DONE jobs, best first."""
        return JSONText([_wire.encode_job(r) for r in storage.top_jobs(experiment, k)])

    @route("GET", "/members", TokenRole.READ, "read populations", list[_MEMBER], 404)
    def members(experiment: ExperimentName) -> Any:
        """The population summary."""
        return JSONText([_wire.encode_member(m) for m in storage.get_members(experiment)])

    add_dashboard(app, storage, authenticator)  # the pages at / (none in the OpenAPI document)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app, secured)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


_DESCRIPTION = (
    "Hyperparameter scheduling (Population Based Training) for workers on many machines. "
    "Every call but `/api/v1/health` -- these docs included -- needs "
    "`Authorization: Bearer <token>` when the server has tokens: the one it was started "
    "with (admin) or one made by `schedy token create` with a role: **read** (GET only), "
    "**worker** (also claims, leases, job reports and added jobs) or **admin** (everything). "
    'Every failure is `{"error": {"type": ..., "message": ...}}`; the client raises '
    "the schedy error named by `type`."
)

#: The member record as it travels (an object of MemberRecord's fields), for the docs.
_MEMBER: Any = dataclasses.make_dataclass(
    "MemberRecord", list(typing.get_type_hints(MemberRecord).items())
)


def _failures(statuses: set[int]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these failure statuses: the error JSON, and why."""
    return {
        status: {"model": _wire.ErrorAnswer, "description": _STATUSES[status]}
        for status in sorted(statuses)
    }


def _problems(error: RequestValidationError) -> str:
    """What was wrong with a request, field by field, in the words of its rules."""
    found = []
    for problem in error.errors():
        where = [str(part) for part in problem.get("loc", ())[1:]]
        if problem.get("type") == "json_invalid":
            found.append("the body is not valid JSON")
            continue
        if isinstance(problem.get("input"), bytes):  # a body FastAPI did not read as JSON
            found.append(f"the body must be JSON, sent as Content-Type: {_wire.MEDIA_TYPE}")
            continue
        message = str(problem.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        found.append(f"{'.'.join(where)}: {message}" if where else message)
    return "; ".join(found) or "invalid request"


def _document(app: FastAPI, secured: bool) -> dict[str, Any]:
    """The OpenAPI document FastAPI writes, made true to what the server does: no
    422 (every invalid request is a 400 in the error JSON), the bearer scheme
    on every route but health when the server has tokens."""
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    health = _wire.API_PREFIX + "/health"
    for path, item in document.get("paths", {}).items():
        for operation in item.values():
            operation.get("responses", {}).pop("422", None)
            if secured and path != health:
                operation["security"] = [{"bearer": []}]
    components = document.setdefault("components", {})
    schemas = components.get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if secured:
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "The server's token, or one made by `schedy token create`",
            }
        }
    return document


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:  # a host name: loopback only if every address it names is
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def serve(
    store: Storage | SchedyDB | str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    log_level: str = "warning",
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    announce: Callable[[str], None] = print,
    artifacts: str | None = None,
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    artifact_keep_top_k: int | None = DEFAULT_KEEP_TOP_K,
) -> None:
    """Serve ``store`` until interrupted (Ctrl-C, SIGTERM).

    ``token`` is the bootstrap token (see :func:`create_app`). Without it
    and without tokens in the store only loopback may listen: anyone who
    reaches the port could otherwise read and change every experiment. With
    ``ssl_certfile`` and ``ssl_keyfile`` (PEM) it speaks HTTPS, so tokens are
    not sent in clear. The socket is bound here, so ``port=0`` picks a free
    port and ``announce`` gets the real URL. ``artifacts`` and the two
    after it: see :func:`create_app`.
    """
    storage = _sql_storage(store)
    app = create_app(
        storage,
        token or None,
        max_body_bytes=max_body_bytes,
        artifacts=artifacts,
        max_artifact_bytes=max_artifact_bytes,
        artifact_keep_top_k=artifact_keep_top_k,
    )
    secured = bool(app.state.token_required)
    if not secured and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host} without a token: anyone reaching it could change "
            "every experiment. Give a token ($SCHEDY_TOKEN or --token-file), create tokens "
            "with `schedy token create`, or listen on 127.0.0.1"
        )
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError(
            "HTTPS needs both a certificate and its key (--ssl-certfile, --ssl-keyfile)"
        )
    for path in (ssl_certfile, ssl_keyfile):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"no such file: {path} (a PEM certificate or key for HTTPS)")
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that
    # say so, and without it every response waits ~40 ms for a delayed ACK.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    scheme = "https" if ssl_certfile else "http"
    served = getattr(storage, "_safe_url", lambda: storage.url)()  # no password in logs
    announce(
        f"schedy server {__version__}: serving {served} on {scheme}://{shown}:{bound} "
        f"({'token required' if secured else 'no token: this machine only'}; API docs at /docs; "
        f"artifacts {'in ' + artifacts if artifacts else 'off: give --artifacts DIR|URL'})"
    )
    config = uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        # Longer than a worker's heartbeat interval (a third of its lease) and a
        # load balancer's usual idle timeout (60 s): with uvicorn's 5 s, pooled
        # connections were closed between heartbeats and requests raced the close.
        timeout_keep_alive=75,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    try:
        config.load()  # reads the certificate now, so a bad one is a clear error
    except (OSError, ssl.SSLError) as error:
        listener.close()
        raise ValueError(f"cannot use the certificate for HTTPS: {error}") from None
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
