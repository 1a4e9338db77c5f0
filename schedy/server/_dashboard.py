"""The dashboard: ``schedy report``'s views served live by ``schedy server``.

``/`` lists the experiments, ``/experiments/{name}`` shows one with the
report's own parts (``schedy._report``: the same data, figures and layout;
nothing is drawn twice), and the page polls ``/dashboard/data/{name}``
while the experiment can still change, redrawing in place (``live.js``).
plotly's JavaScript is served from here, so the dashboard works offline.

**Read-only.** Every route is a GET but the sign-in and sign-out forms, and
nothing here calls a method that writes to the store: a page can show an
experiment, never change it.

**Sign-in.** A browser cannot send a bearer header, so the token is typed
once into ``/sign-in`` (POSTed, never in a URL, never logged) and checked
like a bearer. The cookie then holds a *session*, not the token: an expiry,
whose token it is (a stored token's SHA-256, what the store keeps and no
bearer; ``server`` for the server's own token) and an HMAC of both. So a
stolen cookie cannot call the API, a forged or extended one fails its HMAC,
and every request checks the token as a bearer call would (the same
cache): revoking a token ends its sessions within the cache's seconds.
The HMAC key is derived from the server's own token when it has one, so
replicas started with it, and restarts, keep sessions; a server with
stored tokens only draws its key at start, so a restart signs everyone
out and replicas need a sticky balancer -- the price of keeping no
session table. The cookie is HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it), Secure over HTTPS; the
two POSTs also refuse another site's ``Origin``. A server started without
a token (loopback only) needs no sign-in.

The guard (``_guard``) asks dashboard paths (:func:`is_dashboard_path`) for
no bearer token; the routes here check the session instead. The cookie
never authenticates the API: the guard reads only the bearer header there.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .. import __version__, _wire
from .._records import ExperimentStatus, JobStatus, TokenRole
from .._report import report_data
from .._report._figures import number
from .._report._page import asset, json_for_script, page_parts, plotly_js
from ..errors import AuthenticationError, NotFoundError
from ..experiments import Experiment, _experiment_from_record
from ..storage._base import Storage
from ._auth import Authenticator, allows

__all__ = ["COOKIE", "SESSION_SECONDS", "add_dashboard", "is_dashboard_path"]

#: The session cookie's name.
COOKIE = "schedy_session"
#: How long a sign-in lasts (a working day), unless the token is revoked first.
SESSION_SECONDS = 8 * 3600
#: A session of the server's own token names it so.
_SERVER = "server"
_KEY_SALT = b"schedy dashboard sessions"
#: How often a live page asks for news, at least (a slow store makes it ask less often).
POLL_SECONDS = 3.0
#: The scripts the pages load from ``/dashboard/assets/`` (the report's own, and live.js).
_ASSETS = ("errors.js", "plots.js", "table.js", "live.js")
#: Pages load scripts from this server only and may only ask it for data.
#: ('unsafe-eval': plotly's parallel coordinates compile WebGL shaders with it;
#: inline styles: plotly sets them, and the report's style sheet is inline.)
_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "Cache-Control": "no-store",  # private data: no shared cache, no back-button copy
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_EXTRA_CSS = """
header .bar { display: flex; gap: 16px; align-items: center; margin-top: 8px; font-size: 13px; }
header a { color: #cfe3ff; } header form { margin: 0; }
header button { font: inherit; background: none; border: 1px solid #5d6778; color: #cfe3ff;
  border-radius: 5px; padding: 1px 8px; cursor: pointer; }
#live-status { color: #9fe0a8; } #live-status.bad { color: #ffb4a8; }
.signin { max-width: 460px; margin: 60px auto; } .signin input { width: 100%; font: inherit;
  padding: 7px 9px; border: 1px solid #c9d0da; border-radius: 6px; margin: 6px 0 12px; }
.signin button { font: inherit; padding: 6px 16px; } .error { color: #a4281b; }
"""


def is_dashboard_path(path: str) -> bool:
    """Whether ``path`` is the dashboard's (the guard leaves its sign-in to the routes)."""
    return path in ("/", "/sign-in", "/sign-out") or path.startswith(
        ("/experiments/", "/dashboard/")
    )


class _SignedOut(Exception):
    """A dashboard request without a valid session: a page goes to the sign-in form,
    a data request gets 401 (a script cannot follow a redirect to a form)."""


@dataclass
class _Reader:
    """What an experiment needs of its db (``experiments._Store``): the served
    storage, so the dashboard reads through the same objects as ``schedy report``."""

    _storage: Storage
    _lease_seconds: float = 60.0


@functools.cache
def _derived_key(token: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", token, _KEY_SALT, 100_000)


class _Sessions:
    """Signed session values: ``expiry.subject.mac``, the subject being a stored
    token's digest or ``server`` for the server's own token (whose digest could be
    guessed offline if it were weak: it is chosen by a person)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self._bootstrap = authenticator._bootstrap
        self._key: bytes | None = None if self._bootstrap else secrets.token_bytes(32)

    def _mac(self, message: str) -> str:
        if self._key is None:
            # From the server's own token, so that replicas started with it, and a
            # restart, keep every session; slowly, so that a stolen cookie's MAC
            # is no quick test of guesses at a weak token. Once, on first use.
            assert self._bootstrap is not None
            self._key = _derived_key(self._bootstrap)
        return hmac.new(self._key, message.encode("ascii"), hashlib.sha256).hexdigest()

    def issue(self, token: str) -> str:
        own = self._bootstrap is not None and secrets.compare_digest(
            token.encode("ascii"), self._bootstrap
        )
        subject = _SERVER if own else _wire.hash_secret(token)
        message = f"{int(time.time()) + SESSION_SECONDS}.{subject}"
        return f"{message}.{self._mac(message)}"

    async def role(self, value: str | None) -> TokenRole | None:
        """The role of the session ``value`` names, or None when it is not valid now."""
        if not value or not value.isascii() or value.count(".") != 2:
            return None
        expiry, subject, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(f"{expiry}.{subject}")):
            return None
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        if subject == _SERVER:
            return TokenRole.ADMIN if self._bootstrap is not None else None
        return await self._authenticator.role_of_digest(subject)


def _base(request: Request) -> str:
    """The prefix a proxy mounts the server under (links must carry it)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _page(
    request: Request,
    title: str,
    header: str,
    main: str,
    scripts: str = "",
    status: int = 200,
    head: str = "",
) -> HTMLResponse:
    """A dashboard page: the report's style, the page's header and main, its scripts."""
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)} · schedy</title>"
        f"<style>{asset('report.css')}{_EXTRA_CSS}</style>{head}</head>"
        f"<body><header>{header}</header>{main}{scripts}</body></html>\n"
    )
    return HTMLResponse(document, status_code=status, headers=_PAGE_HEADERS)


def _bar(request: Request, signed: bool, *links: str) -> str:
    """The header's line of links, with the sign-out button when there is a sign-in."""
    base = _base(request)
    parts = [f'<a href="{base}/">all experiments</a>', *links]
    if signed:
        parts.append(
            f'<form method="post" action="{base}/sign-out"><button>sign out</button></form>'
        )
    return f'<div class="bar">{"".join(parts)}</div>'


def _experiment_url(request: Request, name: str) -> str:
    return f"{_base(request)}/experiments/{quote(name, safe='')}"


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _same_origin(request: Request) -> bool:
    """Whether a POST comes from this server's own pages (CSRF). Browsers send
    ``Origin`` with every POST; a client that sends none is no browser, so no
    page of another site made it."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin == f"{request.url.scheme}://{host}"


def _live(experiment: Experiment, data: dict[str, Any]) -> bool:
    """Whether the page can still change: the experiment runs, or a job is open."""
    if experiment.status != ExperimentStatus.DONE:
        return True
    return any(status in (JobStatus.QUEUED, JobStatus.RUNNING) for status in data["jobs"]["status"])


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def add_dashboard(app: FastAPI, storage: Storage, authenticator: Authenticator) -> None:
    """Add the dashboard's routes to ``app`` (none in the OpenAPI document: they are
    pages for people, not an API to program against)."""
    sessions = _Sessions(authenticator)
    reader = _Reader(storage)
    plotly: list[bytes] = []  # read once, on the first request for it

    async def viewer(request: Request) -> None:
        """Lets a request through with a valid session (any role reads), else _SignedOut."""
        if not authenticator.required:
            return
        role = await sessions.role(request.cookies.get(COOKIE))
        if role is None or not allows(role, TokenRole.READ):
            raise _SignedOut()

    async def signed_out(request: Request, error: Exception) -> Response:
        if request.url.path.startswith(_base(request) + "/dashboard/"):
            code, body = _wire.encode_error(
                AuthenticationError("sign in again: the dashboard session ended"), 401
            )
            return JSONResponse(body, status_code=code)
        # The path as the browser sent it (still percent-encoded: a name may hold
        # "/", "%" or "?"), to come back to once signed in.
        raw = bytes(request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
        path = raw.removeprefix(_base(request)) or "/"
        target = quote(path + (f"?{request.url.query}" if request.url.query else ""), safe="")
        return RedirectResponse(f"{_base(request)}/sign-in?next={target}", status_code=303)

    app.add_exception_handler(_SignedOut, signed_out)
    pages = APIRouter(include_in_schema=False, dependencies=[Depends(viewer)])
    doors = APIRouter(include_in_schema=False)

    def load(name: str) -> Experiment:
        experiment = _experiment_from_record(storage.get_experiment(name))
        experiment._db = reader
        return experiment

    def not_found(request: Request, name: str) -> HTMLResponse:
        header = (
            f"<h1>No experiment {html.escape(name)}</h1>{_bar(request, authenticator.required)}"
        )
        main = (
            '<main><section><p class="muted">The store holds no experiment of this name '
            "(it may have been deleted).</p></section></main>"
        )
        return _page(request, "not found", header, main, status=404)

    @pages.get("/")
    def index(request: Request) -> HTMLResponse:
        rows = []
        for record in storage.list_experiments():
            experiment = _experiment_from_record(record)
            experiment._db = reader
            counts = Counter(job.status for job in storage.iter_jobs(record.name))
            best = number(None)
            if experiment.unreadable is None and experiment._result_name is not None:
                found = experiment.best()
                if found is not None:
                    best = number(found.results.get(experiment._result_name))
            status = record.status if experiment.unreadable is None else "UNREADABLE"
            cells = [
                f'<a href="{html.escape(_experiment_url(request, record.name))}">'
                f"{html.escape(record.name)}</a>",
                html.escape(str(record.kind)),
                f'<span class="status-{html.escape(status)}">{html.escape(status)}</span>',
                f"{counts[JobStatus.DONE]:,} / {sum(counts.values()):,}",
                html.escape(best),
            ]
            rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        head = "".join(
            f"<th>{h}</th>" for h in ("experiment", "kind", "status", "jobs done / total", "best")
        )
        body = (
            f'<table id="experiments"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
            if rows
            else '<p class="muted">The store holds no experiment yet.</p>'
        )
        header = (
            f'<h1>schedy</h1><div class="sub">{len(rows)} experiments · schedy {__version__}'
            f" · read-only</div>{_bar(request, authenticator.required)}"
        )
        main = f"<main><section><h2>Experiments</h2>{body}</section></main>"
        return _page(request, "experiments", header, main)

    def parts_of(name: str) -> tuple[Experiment, dict[str, Any]]:
        started = time.monotonic()
        experiment = load(name)
        data = report_data(experiment)
        parts = page_parts(data)
        # The page's shape: when it changes, the page swaps its body instead of
        # redrawing in place (a figure or a column appeared).
        table = parts["table"]
        parts["shape"] = _digest([parts["nav"], table and table["columns"]])
        parts["version"] = _digest({k: v for k, v in parts.items() if k != "summary"})
        parts["status"] = str(experiment.status)
        parts["live"] = _live(experiment, data)
        spent = time.monotonic() - started
        parts["refresh_ms"] = int(1000 * min(60.0, max(POLL_SECONDS, 5 * spent)))
        return experiment, parts

    @pages.get("/experiments/{name:path}")
    def experiment_page(request: Request, name: str) -> HTMLResponse:
        try:
            _, parts = parts_of(name)
        except NotFoundError:
            return not_found(request, name)
        base = _base(request)
        live = {key: parts[key] for key in ("version", "shape", "live", "refresh_ms", "status")} | {
            "url": f"{base}/dashboard/data/{quote(name, safe='')}"
        }
        header = (
            f"<h1>{html.escape(parts['title'])}</h1>"
            f'<div class="sub" id="live-summary">{html.escape(parts["summary"])}</div>'
            + _bar(request, authenticator.required, '<span id="live-status"></span>')
        )
        main = (
            f'<nav id="live-nav">{parts["nav"]}</nav><main><div id="report-errors"></div>'
            f'<div id="live-body">{parts["body"]}</div>'
            f"<footer>schedy dashboard · read-only</footer></main>"
        )
        scripts = (
            f'<script type="application/json" id="figures-data">'
            f"{json_for_script(parts['figures'])}</script>"
            + (
                f'<script type="application/json" id="table-data">'
                f"{json_for_script(parts['table'])}</script>"
                if parts["table"] is not None
                else ""
            )
            + f'<script type="application/json" id="live-data">{json_for_script(live)}</script>'
            + f'<script src="{base}/dashboard/plotly.js"></script>'
            + "".join(
                f'<script src="{base}/dashboard/assets/{script}"></script>'
                for script in ("plots.js", "table.js", "live.js")
            )
        )
        # errors.js first: a failing script or refused request shows at the top.
        errors = f'<script src="{base}/dashboard/assets/errors.js"></script>'
        return _page(request, parts["title"], header, main, scripts, head=errors)

    @pages.get("/dashboard/data/{name:path}")
    def experiment_data(name: str) -> Response:
        """The experiment page's parts as JSON, for its live updates."""
        try:
            _, parts = parts_of(name)
        except NotFoundError as error:
            code, body = _wire.encode_error(error)
            return JSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})
        return JSONResponse(parts, headers={"Cache-Control": "no-store"})

    @pages.get("/dashboard/plotly.js")
    def plotly_script() -> Response:
        if not plotly:
            plotly.append(plotly_js().encode("utf-8"))
        return Response(
            plotly[0],
            media_type="text/javascript",
            headers={
                "Cache-Control": "private, max-age=86400",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @pages.get("/dashboard/assets/{script}")
    def script(script: str) -> Response:
        if script not in _ASSETS:
            code, body = _wire.encode_error(NotFoundError(f"the dashboard has no {script}"))
            return JSONResponse(body, status_code=code)
        return Response(
            asset(script),
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    def sign_in_form(request: Request, target: str, error: str = "", status: int = 200) -> Response:
        base = _base(request)
        message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        main = (
            '<main><section class="signin"><h2>Sign in</h2>'
            '<p class="note">Give the server\'s token, or one made by <code>schedy token '
            "create</code> (any role: the dashboard only reads). The browser keeps a signed "
            "session in a cookie, not the token; it ends after "
            f"{SESSION_SECONDS // 3600} hours, at sign-out, or when the token is revoked.</p>"
            f'{message}<form method="post" action="{base}/sign-in">'
            f'<input type="hidden" name="next" value="{html.escape(target)}">'
            '<label>Token<input type="password" name="token" autocomplete="current-password" '
            'required autofocus></label><button type="submit">Sign in</button></form>'
            "</section></main>"
        )
        return _page(request, "sign in", "<h1>schedy</h1>", main, status=status)

    @doors.get("/sign-in")
    async def sign_in_page(request: Request, next: str = "/") -> Response:
        target = _safe_next(next)
        if not authenticator.required:
            return RedirectResponse(_base(request) + target, status_code=303)
        return sign_in_form(request, target)

    @doors.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        if not _same_origin(request):
            return _refused(request)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        target = _safe_next((form.get("next") or ["/"])[0])
        if not authenticator.required:
            return RedirectResponse(_base(request) + target, status_code=303)
        token = (form.get("token") or [""])[0].strip()
        role = None
        if token and token.isascii() and token.isprintable():
            role = await authenticator.role(b"Bearer " + token.encode("ascii"))
        if role is None:
            return sign_in_form(
                request,
                target,
                "This server does not know that token (mistyped, or revoked). Give the "
                "server's token or one from `schedy token create`.",
                status=403,
            )
        answer = RedirectResponse(_base(request) + target, status_code=303)
        answer.set_cookie(
            COOKIE,
            sessions.issue(token),
            max_age=SESSION_SECONDS,
            path=_base(request) + "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return answer

    @doors.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        if not _same_origin(request):
            return _refused(request)
        answer = RedirectResponse(_base(request) + "/sign-in", status_code=303)
        answer.delete_cookie(
            COOKIE,
            path=_base(request) + "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return answer

    app.include_router(doors)
    app.include_router(pages)


def _refused(request: Request) -> HTMLResponse:
    main = (
        '<main><section><p class="error">Refused: this form was sent by a page of another '
        "site. Sign in from this server's own page.</p></section></main>"
    )
    return _page(request, "refused", "<h1>schedy</h1>", main, status=403)
