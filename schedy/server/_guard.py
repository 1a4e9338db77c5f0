"""The server's front door: one pure ASGI middleware every request passes first.

Why here, and why pure ASGI: FastAPI reads and parses a request's body
before it runs any dependency, so a token checked in a dependency was
checked after the work it should have spared -- four parallel 200 MB
uploads without a token took a server to 1.67 GB. This layer runs before
FastAPI sees the request, so, in this order:

1. **who**: the bearer token is checked, from the headers alone; a request
   without a valid one gets 401, one whose role may not make the call 403,
   and neither has a byte of its body read (uvicorn drops what the client
   still sends);
2. **how big**: a body announced larger than the limit gets 413 at once; one
   without a Content-Length (chunked) is read in chunks, and refused with
   413 as soon as it passes the limit, so memory per request stays bounded
   (a route named in ``streamed`` -- artifact uploads -- reads its own body
   as a stream, up to its own limit);
3. **how deep**: a body nesting deeper than ``_wire.MAX_BODY_DEPTH`` levels
   gets 400 before any parser recurses into it (a scan of its brackets,
   strings left out);
4. **what if it breaks**: an exception nothing else handled is logged in
   full and answered with a generic 500 in the error JSON, *as a response*:
   Starlette's own last-resort handler answers and then re-raises, and
   uvicorn closes a connection whose request raised, so every call that
   followed on the kept-alive connection failed with "connection reset".

Every answer made here is in the wire's error JSON, like the routes' own.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Mapping
from itertools import accumulate
from typing import NamedTuple

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import _values, _wire
from .._records import TokenRole
from ..errors import AuthenticationError, SchedyError, ServerError
from ._auth import Authenticator, allows

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Access", "Guard", "describe_size", "too_deep"]

logger = logging.getLogger("schedy.server")

#: The largest request body by default: far above any job (values are JSON),
#: far below what would hurt a server holding several at once.
DEFAULT_MAX_BODY_BYTES = _wire.DEFAULT_MAX_BODY_BYTES
#: Bodies larger than this are scanned for depth off the event loop.
_SCAN_INLINE_BYTES = 2**20
#: The 500's message: what happened is in the server's log, not in the answer.
GENERIC_FAILURE = (
    "the schedy server failed on this request (an internal error; the server logged the "
    "details): retry, or report it with the server's log"
)
REFUSED = (
    "the schedy server refused the token (missing, unknown or revoked): give the server's "
    "token to SchedyDB (token=...) or in $SCHEDY_TOKEN"
)


class Access(NamedTuple):
    """Who may call a route: the least role (None: anyone, no token), and what the
    call does, for the message of a refusal (``create experiments``)."""

    role: TokenRole | None
    action: str


#: A path and method no route has: any valid token, then the router's 404 or 405.
_UNKNOWN = Access(TokenRole.READ, "call this")
#: A dashboard path: its routes check the sign-in cookie themselves.
_PAGE = Access(None, "")


def describe_size(size: int) -> str:
    """``16 MiB``, ``4 KiB`` or ``1000 bytes``: a limit as people write it."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


_ESCAPES = re.compile(rb"\\.", re.DOTALL)
#: Escapes gone, a string is quote to quote: linear, whatever the body holds.
_STRINGS = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
#: An opening bracket weighs 2, a closing one 0: after k brackets the depth is
#: (sum of their weights) - k, so the running depth is one C-level accumulate.
_WEIGHTS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_CHUNK = 1 << 16


def too_deep(body: bytes, limit: int = _wire.MAX_BODY_DEPTH) -> bool:
    """Whether the JSON text ``body`` nests deeper than ``limit`` arrays/objects.

    Brackets inside strings do not count. Malformed JSON is scanned the same
    way (the parser refuses it afterwards). Stops at the first chunk that
    goes too deep, so a hostile body costs one chunk."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the usual case: two C-level counts
    skeleton = _STRINGS.sub(b"", _ESCAPES.sub(b"", body)).translate(_WEIGHTS, _NOT_BRACKETS)
    weight = 0
    for start in range(0, len(skeleton), _CHUNK):
        chunk = skeleton[start : start + _CHUNK]
        sums = accumulate(chunk, initial=weight)
        if max(map(operator.sub, sums, range(start, start + len(chunk) + 1))) > limit:
            return True
        weight += sum(chunk)
    return False


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _route_path(scope: Scope) -> str:
    """The path as routes see it: without the ``root_path`` a proxy mounts it under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


async def answer(
    send: Send,
    error: BaseException,
    status: int | None = None,
    message: str | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Send ``error`` as the wire's error JSON (the table's status unless ``status``)."""
    code, payload = _wire.encode_error(error, status, message)
    content = _wire.encode(payload)
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", _wire.MEDIA_TYPE.encode()),
                (b"content-length", str(len(content)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


class Guard:
    """The middleware (see the module docstring). ``rules`` maps each route's
    ``(METHOD, path)`` to its :class:`Access`; anything else needs a valid token
    and reaches the router, which answers 404 or 405."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        rules: dict[tuple[str, str], Access],
        max_body_bytes: int,
        scrub: Callable[[str], str] = str,
        pages: Callable[[str], bool] | None = None,
        streamed: Mapping[tuple[str, str], tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        # (METHOD, path) -> (limit, option): routes that stream their body
        # themselves (artifact uploads), refused here only when announced too large.
        self._streamed = dict(streamed or {})
        # Paths of the dashboard (``_dashboard``): its routes check a sign-in
        # cookie themselves, so no bearer token is asked for here; the API never
        # reads that cookie.
        self._pages = pages
        self._authenticator = authenticator
        self._rules = rules
        self._max_body_bytes = max_body_bytes
        self._scrub = scrub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._serve(scope, receive, tracked)
        except Exception as error:
            if started:  # half an answer went out: only closing the connection is left
                raise
            if isinstance(error, SchedyError):  # the store failed to check a token, say
                await answer(send, error, message=self._scrub(str(error)))
                return
            logger.exception("schedy server: %s %s failed", scope.get("method"), scope.get("path"))
            await answer(send, ServerError(GENERIC_FAILURE))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = _route_path(scope)
        access = self._rules.get(("GET" if method == "HEAD" else method, path), _UNKNOWN)
        if self._pages is not None and self._pages(path):
            access = _PAGE
        if access.role is not None:
            role = await self._authenticator.role(_header(scope, b"authorization"))
            if role is None:
                await answer(
                    send,
                    AuthenticationError(REFUSED),
                    headers=((b"www-authenticate", b'Bearer realm="schedy"'),),
                )
                return
            if not allows(role, access.role):
                article = "an" if access.role is TokenRole.ADMIN else "a"
                await answer(
                    send,
                    AuthenticationError(
                        f"a {role} token may not {access.action} ({method} {path}): that "
                        f"needs {article} {access.role} token (`schedy token create --role "
                        f"{access.role}`)"
                    ),
                    _wire.FORBIDDEN_STATUS,
                )
                return
        length = _header(scope, b"content-length")
        limit, option = self._streamed.get((method, path), (self._max_body_bytes, ""))
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(send, limit, option)
            return
        if option:  # the route reads the body itself, never whole, up to its limit
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            await self._too_large(send)
            return
        if body is False:  # the client left
            return
        assert isinstance(body, bytes)
        deep = (
            too_deep(body)
            if len(body) <= _SCAN_INLINE_BYTES
            else await anyio.to_thread.run_sync(too_deep, body)
        )
        if deep:
            await answer(
                send,
                ValueError(
                    f"the request body nests deeper than {_wire.MAX_BODY_DEPTH} levels (a stored "
                    f"value may nest {_values.MAX_DEPTH})"
                ),
            )
            return
        await self.app(scope, _replay(body, receive), send)

    async def _too_large(self, send: Send, limit: int | None = None, option: str = "") -> None:
        await answer(
            send,
            ValueError(
                "the request body is larger than this server's limit of "
                f"{describe_size(limit or self._max_body_bytes)} "
                f"(`schedy server {option or '--max-body-mb'}`)"
            ),
            413,
        )

    async def _read_body(self, receive: Receive) -> bytes | bool | None:
        """The whole body; None once it passes the limit (the rest is left
        unread), False when the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                return None
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then listens as before
    (for the client's disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
