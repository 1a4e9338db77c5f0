"""The FastAPI application: one endpoint per ``Storage`` method.

The wire format -- the API prefix, JSON bodies that keep NaN and +/-inf,
records, request bodies and the error table -- is ``schedy._wire``, which
the client (``schedy.storage._http``) imports too: this module only routes
requests to the storage and answers in that format, so the two sides cannot
disagree. Experiment names and job ids travel as query parameters, not path
segments: a name may hold any character (``/`` too). A failure comes back
as the error table's type name and status, and the client raises the same
class the storage raised.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Callable
from typing import Any

try:
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"schedy server needs FastAPI and uvicorn ({error}): pip install 'schedy[server]'"
    ) from None

from .. import __version__, _wire
from .._records import ExperimentRecord
from ..db import SchedyDB
from ..errors import AuthenticationError, SchedyError, ServerError
from ..storage._base import Storage
from ..storage._http import HTTPStorage

__all__ = ["create_app", "serve"]

logger = logging.getLogger(__name__)


class JSONText(Response):
    """A body in the wire's JSON (``_wire.encode``): NaN and infinities stay numbers."""

    media_type = _wire.MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return _wire.encode(content)


def _error(error: BaseException) -> JSONText:
    """``error`` as the wire's error table says: its public name and status."""
    status, body = _wire.encode_error(error)
    return JSONText(body, status_code=status)


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


def create_app(store: Storage | SchedyDB | str, token: str | None = None) -> FastAPI:
    """The ASGI application serving ``store`` (a database URL or a ``SchedyDB``);
    with ``token``, every API call needs ``Authorization: Bearer <token>``
    (``/api/v1/health`` stays open)."""
    storage = _sql_storage(store)
    app = FastAPI(
        title="schedy",
        version=__version__,
        description="Hyperparameter scheduling (Population Based Training) for workers "
        "on many machines. Every call but /health needs `Authorization: Bearer <token>` "
        "when the server was started with a token.",
        default_response_class=JSONText,
    )
    expected = None if token is None else token.encode("utf-8")

    async def authorize(request: Request) -> None:
        # async: a plain def dependency would cost a thread hop per request.
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode("utf-8"), expected
        ):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, error: _Unauthorized) -> Response:
        return _error(
            AuthenticationError(
                "the schedy server refused the token: give the server's token to SchedyDB "
                "(token=...) or in $SCHEDY_TOKEN"
            )
        )

    @app.exception_handler(SchedyError)
    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def known_error(request: Request, error: Exception) -> Response:
        # Named by the public class it is (a private subclass travels as its
        # base); one the table lacks (NoJobError, say) is a ServerError.
        return _error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        return _error(ValueError(f"invalid request to the schedy server: {problems}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        logger.exception("schedy server: %s %s failed", request.method, request.url.path)
        return _error(ServerError(f"the schedy server failed: {error!r}"))

    secured = [Depends(authorize)]

    def route(method: str, path: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
        return app.api_route(
            _wire.API_PREFIX + path, methods=[method], dependencies=secured, **options
        )

    @app.get(_wire.API_PREFIX + "/health")
    def health() -> Any:
        """Open to all: lets a client tell a schedy server from anything else."""
        return JSONText(_wire.hello(__version__))

    @route("GET", "/session")
    def session() -> Any:
        """Checks the token: clients call it once, so a wrong one fails at SchedyDB()."""
        return JSONText(_wire.hello(__version__))

    # -- experiments -----------------------------------------------------------
    @route("GET", "/experiments")
    def list_experiments() -> Any:
        return JSONText([_wire.encode_experiment(r) for r in storage.list_experiments()])

    @route("POST", "/experiments", status_code=201)
    def create_experiment(body: ExperimentRecord) -> Any:
        storage.create_experiment(body)
        return JSONText({}, status_code=201)

    @route("GET", "/experiment")
    def get_experiment(name: str) -> Any:
        return JSONText(_wire.encode_experiment(storage.get_experiment(name)))

    @route("PUT", "/experiment")
    def update_experiment(name: str, body: _wire.ExperimentChange) -> Any:
        storage.update_experiment(name, body.status, body.config)
        return JSONText({})

    @route("DELETE", "/experiment")
    def delete_experiment(name: str) -> Any:
        storage.delete_experiment(name)
        return JSONText({})

    # -- jobs ------------------------------------------------------------------
    @route("POST", "/jobs", status_code=201)
    def add_job(experiment: str, body: _wire.NewJob) -> Any:
        record = storage.add_job(experiment, body.status, body.hyperparameters, body.results)
        return JSONText(_wire.encode_job(record), status_code=201)

    @route("GET", "/jobs")
    def list_jobs(
        experiment: str, after: str | None = None, limit: int = Query(1000, ge=1, le=10000)
    ) -> Any:
        found = storage.list_jobs(experiment, after=after, limit=limit)
        return JSONText([_wire.encode_job(record) for record in found])

    @route("GET", "/job")
    def get_job(experiment: str, id: str) -> Any:
        return JSONText(_wire.encode_job(storage.get_job(experiment, id)))

    @route("PATCH", "/job")
    def update_job(experiment: str, id: str, body: _wire.JobChange) -> Any:
        record = storage.update_job(experiment, id, body.update(), lease_token=body.lease_token)
        return JSONText(_wire.encode_job(record))

    @route("DELETE", "/job")
    def delete_job(experiment: str, id: str) -> Any:
        storage.delete_job(experiment, id)
        return JSONText({})

    # -- scheduling ------------------------------------------------------------
    @route("POST", "/claim")
    def claim_job(experiment: str, body: _wire.ClaimRequest) -> Any:
        claim = storage.claim_job(experiment, body.lease_seconds, body.request_id)
        return JSONText(_wire.encode_claim(claim))

    @route("POST", "/lease")
    def renew_lease(experiment: str, id: str, body: _wire.LeaseRenewal) -> Any:
        renewed = storage.renew_lease(experiment, id, body.lease_token, body.lease_seconds)
        return JSONText(_wire.encode_renewed(renewed))

    @route("GET", "/jobs-in-use")
    def jobs_in_use(experiment: str, top_k: int = Query(0, ge=0)) -> Any:
        return JSONText([_wire.encode_job(r) for r in storage.jobs_in_use(experiment, top_k)])

    @route("GET", "/top-jobs")
    def top_jobs(experiment: str, k: int = Query(1, ge=0)) -> Any:
        return JSONText([_wire.encode_job(r) for r in storage.top_jobs(experiment, k)])

    @route("GET", "/members")
    def members(experiment: str) -> Any:
        return JSONText([_wire.encode_member(m) for m in storage.get_members(experiment)])

    return app


class _Unauthorized(Exception):
    """A request without the server's token."""


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
    announce: Callable[[str], None] = print,
) -> None:
    """Serve ``store`` until interrupted (Ctrl-C, SIGTERM).

    Without a token only loopback may listen: anyone who reaches the port
    could otherwise read and change every experiment. With ``ssl_certfile``
    and ``ssl_keyfile`` (PEM) it speaks HTTPS, so the token is not sent in
    clear. The socket is bound here, so ``port=0`` picks a free port and
    ``announce`` gets the real URL.
    """
    storage = _sql_storage(store)
    if not token and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host} without a token: anyone reaching it could change "
            "every experiment. Give --token (or $SCHEDY_TOKEN), or listen on 127.0.0.1"
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
        f"({'token required' if token else 'no token: this machine only'}; API docs at /docs)"
    )
    config = uvicorn.Config(
        create_app(storage, token or None),
        log_level=log_level,
        timeout_graceful_shutdown=10,
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
