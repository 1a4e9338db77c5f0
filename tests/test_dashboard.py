"""The dashboard on ``schedy server``: sign-in, read-only pages, escaping, live data,
and the experiment page in a real headless Chromium.

Most checks talk to the application in process (Starlette's TestClient). The
browser test serves a store on a loopback port and drives Debian's
``chromium`` over the DevTools protocol on a pipe (``--remote-debugging-pipe``,
standard library only): it signs in through the form, waits until every plot
holds rendered SVG or canvas, sorts the job table, then finishes a job in the
store and waits -- polling the DOM against a deadline -- until the page shows
it without a reload.
"""

from __future__ import annotations

import base64
import json
import os
import random
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import schedy
from schedy import _wire
from schedy.storage._sql import SQLStorage

pytest.importorskip("fastapi")
pytest.importorskip("plotly")

from starlette.testclient import TestClient

from schedy.server import _dashboard, create_app

TOKEN = "dashboard-token-0123456789"
#: A name and a hyperparameter name that would run script if pasted into a page as is.
EVIL = "<script>alert(1)</script>/x"
EVIL_HP = "<img src=x onerror=alert(2)>"
CHROMIUM = "/usr/bin/chromium"
#: What the store's writers are; the dashboard may call none of them.
WRITERS = (
    "create_experiment",
    "update_experiment",
    "delete_experiment",
    "add_job",
    "update_job",
    "delete_job",
    "claim_job",
    "renew_lease",
    "create_token",
    "revoke_token",
)


def pbt(db: schedy.SchedyDB, name: str = "pbt", generations: int = 3) -> schedy.Experiment:
    """A seeded PBT experiment, population 3, not yet run; an odd hyperparameter name."""
    experiment = schedy.PopulationBasedTraining(
        name,
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.34),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={
            "lr": schedy.random.LogUniform(1e-4, 1e-1),
            EVIL_HP: schedy.random.Choice(["a", "b"]),
        },
        population_size=3,
        max_generations=generations,
        seed=3,
    )
    db.add_experiment(experiment)
    return experiment


def run(experiment: schedy.Experiment, jobs: int, rng: random.Random) -> None:
    for _ in range(jobs):
        with experiment.next_job() as job:
            job.results["acc"] = 0.5 + 0.1 * (job.generation or 0) + rng.random() * 0.01


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/dash.db"


@pytest.fixture
def db(url: str) -> Iterator[schedy.SchedyDB]:
    handle = schedy.SchedyDB(url, create=True)
    yield handle
    handle.close()


def client(storage: SQLStorage | str, token: str | None = TOKEN, **options: Any) -> TestClient:
    return TestClient(create_app(storage, token, **options), follow_redirects=False)


def sign_in(web: TestClient, token: str = TOKEN, target: str = "/") -> Any:
    return web.post("/sign-in", data={"token": token, "next": target})


# -- sign-in ----------------------------------------------------------------------------


def test_a_page_without_a_session_goes_to_the_sign_in_form(url: str) -> None:
    web = client(url)
    for path in ("/", "/experiments/a%2Fb", "/experiments/x?y=1"):
        answer = web.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/sign-in?next=")
    assert (
        web.get("/experiments/a%2Fb").headers["location"]
        == "/sign-in?next=%2Fexperiments%2Fa%252Fb"
    )
    for path in ("/dashboard/data/x", "/dashboard/plotly.js", "/dashboard/assets/live.js"):
        answer = web.get(path)  # what scripts ask for: 401, not a redirect to a form
        assert answer.status_code == 401, path
        assert answer.json()["error"]["type"] == "AuthenticationError"
    form = web.get("/sign-in?next=/experiments/x")
    assert form.status_code == 200 and 'method="post"' in form.text
    assert 'type="password" name="token"' in form.text
    assert 'name="next" value="/experiments/x"' in form.text
    assert form.headers["content-security-policy"].startswith("default-src 'none'")


def test_a_wrong_token_shows_the_form_again_with_an_error(url: str) -> None:
    web = client(url)
    for wrong in ("wrong-token-0123456789", "", "tøken-with-ünicode-01234"):
        answer = sign_in(web, wrong)
        assert answer.status_code == 403
        assert "does not know that token" in answer.text and 'name="token"' in answer.text
        assert "set-cookie" not in answer.headers
        assert wrong not in answer.text or not wrong
    assert web.get("/").status_code == 303


def test_the_right_token_sets_a_signed_httponly_strict_cookie(url: str) -> None:
    web = client(url)
    answer = sign_in(web, TOKEN, "/experiments/a%2Fb")
    assert answer.status_code == 303 and answer.headers["location"] == "/experiments/a%2Fb"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "secure" not in attributes  # plain HTTP
    value = web.cookies[_dashboard.COOKIE]
    assert TOKEN not in value and _wire.hash_secret(TOKEN) not in value  # "server", signed
    assert web.get("/").status_code == 200
    assert web.get("/sign-in").status_code == 200  # the form stays reachable
    # Over HTTPS the cookie is Secure as well.
    secure = TestClient(create_app(url, TOKEN), base_url="https://testserver")
    answer = secure.post("/sign-in", data={"token": TOKEN}, follow_redirects=False)
    assert "secure" in {part.strip().lower() for part in answer.headers["set-cookie"].split(";")}


def test_a_tampered_or_expired_session_is_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = client(url)
    sign_in(web)
    expiry, digest, mac = web.cookies[_dashboard.COOKIE].split(".")
    for forged in (
        f"{int(expiry) + 10**6}.{digest}.{mac}",  # a longer session
        f"{expiry}.{_wire.hash_secret('another')}.{mac}",  # another token
        "nonsense",
        "",
    ):
        web.cookies.clear()
        web.cookies.set(_dashboard.COOKIE, forged)
        assert web.get("/").status_code == 303, forged
    web.cookies.clear()
    web.cookies.set(_dashboard.COOKIE, f"{expiry}.{digest}.{mac}")
    assert web.get("/").status_code == 200
    monkeypatch.setattr(_dashboard, "SESSION_SECONDS", -1)  # sessions that ended at once
    web.cookies.clear()
    sign_in(web)
    assert web.get("/").status_code == 303


def test_a_session_holds_on_every_server_with_the_same_token(url: str) -> None:
    # Replicas (and a restarted server) started with one token accept each other's
    # sessions; a server with another token does not.
    web = client(url)
    sign_in(web)
    session = web.cookies[_dashboard.COOKIE]
    for token, status in ((TOKEN, 200), ("another-token-0123456789", 303)):
        replica = client(url, token)
        replica.cookies.set(_dashboard.COOKIE, session)
        assert replica.get("/").status_code == status


def test_revoking_a_token_ends_its_sessions(url: str, db: schedy.SchedyDB) -> None:
    storage = SQLStorage(url)
    secret = "read-only-secret-0123456789abcdef"
    storage.create_token("viewer", "read", _wire.hash_secret(secret))
    web = client(storage, None, token_cache_seconds=0)  # stored tokens only
    pbt(db)
    assert sign_in(web, secret).status_code == 303
    assert _wire.hash_secret(secret) in web.cookies[_dashboard.COOKIE]  # its digest, signed
    assert secret not in web.cookies[_dashboard.COOKIE]
    assert web.get("/experiments/pbt").status_code == 200  # a read token may view
    storage.revoke_token("viewer")
    assert web.get("/experiments/pbt").status_code == 303
    assert web.get("/dashboard/data/pbt").status_code == 401
    assert sign_in(web, secret).status_code == 403


def test_sign_out_ends_the_session(url: str) -> None:
    web = client(url)
    sign_in(web)
    answer = web.post("/sign-out")
    assert answer.status_code == 303 and answer.headers["location"] == "/sign-in"
    assert "max-age=0" in answer.headers["set-cookie"].lower()
    assert web.get("/").status_code == 303


def test_the_forms_refuse_another_sites_posts_and_go_only_to_this_server(url: str) -> None:
    web = client(url)
    answer = web.post("/sign-in", data={"token": TOKEN}, headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403 and "set-cookie" not in answer.headers
    assert (
        web.post("/sign-in", data={"token": TOKEN}, headers={"Origin": "null"}).status_code == 403
    )
    same = web.post("/sign-in", data={"token": TOKEN}, headers={"Origin": "http://testserver"})
    assert same.status_code == 303
    assert web.post("/sign-out", headers={"Origin": "https://evil.example"}).status_code == 403
    assert web.get("/").status_code == 200  # still signed in
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "x"):
        assert sign_in(web, TOKEN, target).headers["location"] == "/", target


def test_the_api_still_takes_bearer_tokens_only(url: str) -> None:
    web = client(url)
    sign_in(web)
    assert web.get("/").status_code == 200  # signed in
    for path in ("/api/v1/experiments", "/api/v1/session", "/openapi.json", "/docs"):
        assert web.get(path).status_code == 401, path  # the cookie alone opens nothing
    session = web.cookies[_dashboard.COOKIE]
    assert (
        web.get("/api/v1/experiments", headers={"Authorization": f"Bearer {session}"}).status_code
        == 401
    )
    answer = web.get("/api/v1/experiments", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200


def test_a_server_without_a_token_needs_no_sign_in(url: str, db: schedy.SchedyDB) -> None:
    pbt(db)
    web = client(url, None)
    page = web.get("/")
    assert page.status_code == 200 and "sign out" not in page.text
    assert web.get("/experiments/pbt").status_code == 200
    assert web.get("/sign-in?next=/experiments/pbt").headers["location"] == "/experiments/pbt"


def test_no_dashboard_route_is_in_the_openapi_document(url: str) -> None:
    paths = set(create_app(url, TOKEN).openapi()["paths"])
    assert paths and all(path.startswith(_wire.API_PREFIX) for path in paths)


# -- read-only, escaped -------------------------------------------------------------------


def test_no_dashboard_request_changes_the_store(url: str, db: schedy.SchedyDB) -> None:
    experiment = pbt(db, EVIL)
    run(experiment, 4, random.Random(1))
    running = experiment.next_job()
    storage = SQLStorage(url)
    calls: list[str] = []
    for writer in WRITERS:
        original = getattr(storage, writer)

        def recorded(*args: Any, _name: str = writer, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(*args)

        setattr(storage, writer, recorded)
    before = [(job.id, job.status, job.results) for job in experiment.all_jobs()]
    web = client(storage)
    sign_in(web)
    name = quote(EVIL, safe="")
    paths = [
        "/",
        f"/experiments/{name}",
        f"/dashboard/data/{name}",
        "/experiments/unknown",
        "/dashboard/data/unknown",
        "/dashboard/plotly.js",
        "/dashboard/assets/live.js",
        "/dashboard/assets/nothing.js",
        "/sign-in",
    ]
    for path in paths:
        assert web.get(path).status_code in (200, 404), path
        for method in ("PUT", "PATCH", "DELETE", "POST"):
            if path == "/sign-in" and method == "POST":
                continue
            assert web.request(method, path).status_code == 405, (method, path)
    assert web.post("/sign-in", data={"token": TOKEN}).status_code == 303
    assert web.post("/sign-out").status_code == 303
    assert calls == []
    assert [(job.id, job.status, job.results) for job in experiment.all_jobs()] == before
    assert running.status == "RUNNING"


def test_every_stored_string_is_escaped(url: str, db: schedy.SchedyDB) -> None:
    experiment = pbt(db, EVIL)
    run(experiment, 3, random.Random(2))
    web = client(url)
    sign_in(web)
    index = web.get("/").text
    page = web.get(f"/experiments/{quote(EVIL, safe='')}").text
    data = web.get(f"/dashboard/data/{quote(EVIL, safe='')}").json()
    fragments = "".join(data[key] for key in ("nav", "body", "cards", "best", "summary"))
    for text in (index, page, fragments):
        assert "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert f'href="/experiments/{quote(EVIL, safe="")}"' in index
    assert "&lt;img src=x onerror=alert(2)&gt;" in page  # the job table's header
    assert web.get(f"/experiments/{quote('<b>none</b>', safe='')}").status_code == 404
    assert "&lt;b&gt;none&lt;/b&gt;" in web.get("/experiments/%3Cb%3Enone%3C%2Fb%3E").text


def test_the_index_lists_every_experiment(url: str, db: schedy.SchedyDB) -> None:
    run(pbt(db, "first"), 3, random.Random(3))
    pbt(db, "second")
    web = client(url)
    sign_in(web)
    page = web.get("/").text
    rows = page.split("<tbody>")[1].split("</tbody>")[0].split("</tr>")[:-1]
    assert len(rows) == 2
    assert ">first</a>" in rows[0] and "3 / 3" in rows[0] and "RUNNING" in rows[0]
    assert ">second</a>" in rows[1] and "0 / 0" in rows[1] and "<td>\N{EN DASH}</td>" in rows[1]


# -- live data ------------------------------------------------------------------------------


def test_the_data_follows_the_experiment_and_says_when_it_is_over(
    url: str, db: schedy.SchedyDB
) -> None:
    experiment = pbt(db, generations=2)
    web = client(url)
    sign_in(web)
    empty = web.get("/dashboard/data/pbt").json()
    assert empty["live"] is True and empty["table"] is None and empty["figures"] == []
    assert empty["refresh_ms"] >= 1000 * _dashboard.POLL_SECONDS
    rng = random.Random(4)
    run(experiment, 2, rng)
    job = experiment.next_job()
    with job:
        first = web.get("/dashboard/data/pbt").json()
        statuses = {row[0]: row[1] for row in first["table"]["rows"]}
        assert statuses[job.id] == "RUNNING" and len(statuses) == 3
        assert first["shape"] != empty["shape"] and first["figures"]
        again = web.get("/dashboard/data/pbt").json()
        assert again["version"] == first["version"]  # nothing changed: nothing to redraw
        job.results["acc"] = 0.9
    second = web.get("/dashboard/data/pbt").json()
    assert second["version"] != first["version"]
    assert {row[0]: row[1] for row in second["table"]["rows"]}[job.id] == "DONE"
    assert second["live"] is True
    run(experiment, 3, rng)
    with pytest.raises(schedy.errors.NoJobError):
        experiment.next_job(timeout=0)
    assert experiment.status == "DONE"
    done = web.get("/dashboard/data/pbt").json()
    assert done["live"] is False and done["status"] == "DONE"
    page = web.get("/experiments/pbt").text
    assert '"live":false' in page  # a finished experiment's page does not poll
    assert web.get("/dashboard/data/gone").status_code == 404


# -- in a real browser ----------------------------------------------------------------------


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe: JSON messages
    ended by NUL, commands on fd 3, answers and events on fd 4."""

    def __init__(self, profile: Path) -> None:
        to_chromium, self._commands = os.pipe()
        self._answers, from_chromium = os.pipe()

        def wire() -> None:  # in the child: the two pipes as fds 3 and 4
            commands, answers = os.dup(to_chromium), os.dup(from_chromium)
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",  # root in CI containers
                "--remote-debugging-pipe",
                "--enable-unsafe-swiftshader",  # software WebGL for parallel coordinates
                f"--user-data-dir={profile}",
                "--no-first-run",
                "--window-size=1280,2000",
                "about:blank",
            ],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._last = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", page=True)

    def call(self, method: str, page: bool = False, **params: Any) -> dict[str, Any]:
        self._last += 1
        message: dict[str, Any] = {"id": self._last, "method": method, "params": params}
        if page:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            found = self._read(time.monotonic() + 30)
            if found.get("id") == self._last:
                if "error" in found:
                    raise RuntimeError(f"{method}: {found['error']}")
                result: dict[str, Any] = found["result"]
                return result
            self.events.append(found)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select(
                [self._answers], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise EOFError("chromium exited")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def evaluate(self, expression: str) -> Any:
        found = self.call(
            "Runtime.evaluate",
            page=True,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in found:
            raise AssertionError(f"{expression}: {found['exceptionDetails']}")
        return found["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 30.0) -> Any:
        """The value of ``expression`` once it is truthy, polled against a deadline
        (a generous one: on a loaded 2-core machine the plots once took over 10 s)."""
        deadline = time.monotonic() + seconds
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {seconds} s: {expression}")
            time.sleep(0.05)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, failed loads, dialogs (alert())."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(str(params["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                if "GL Driver" not in params["entry"]["text"]:
                    found.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog: {params.get('message')}")
        return found

    def close(self) -> None:
        with suppress(EOFError, OSError, TimeoutError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)


#: Every plot container holds plotly's rendered SVG (or a WebGL canvas).
PLOTS_DRAWN = """(() => {
  const plots = [...document.querySelectorAll('#live-body .plot')];
  return plots.length > 0 && plots.every(p => p.querySelector('svg.main-svg, canvas'))
    ? plots.map(p => p.id) : null;
})()"""
#: The job table's column of a header's name, top to bottom.
COLUMN = """((name) => {
  const head = [...document.querySelectorAll('#jobs thead th')].map(th => th.textContent);
  const at = head.indexOf(name);
  return [...document.querySelectorAll('#jobs tbody tr')].map(r => r.cells[at].textContent);
})"""
SORT_BY_MEMBER = (
    "[...document.querySelectorAll('#jobs thead th')]"
    ".find(th => th.textContent === 'member').click(); true"
)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="no headless Chromium at /usr/bin/chromium (apt-get install -y chromium)",
)
def test_the_experiment_page_in_chromium_follows_a_running_experiment(
    url: str,
    db: schedy.SchedyDB,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_server: Callable[..., AbstractContextManager[str]],
) -> None:
    monkeypatch.setattr(_dashboard, "POLL_SECONDS", 0.2)  # the page asks 5 times a second
    experiment = pbt(db, EVIL)
    run(experiment, 4, random.Random(5))
    running = experiment.next_job()
    browser = _Chromium(tmp_path / "profile")
    try:
        with start_server(SQLStorage(url), TOKEN) as base:
            page = f"{base}/experiments/{quote(EVIL, safe='')}"
            with running:
                browser.call("Page.navigate", page=True, url=page)
                browser.wait_for("document.querySelector('input[name=token]') !== null")
                assert browser.evaluate("location.pathname") == "/sign-in"
                browser.evaluate(
                    f"document.querySelector('input[name=token]').value = {json.dumps(TOKEN)};"
                    "document.querySelector('form').submit(); true"
                )
                browser.wait_for("document.getElementById('live-body') !== null")
                assert browser.evaluate("location.href") == page
                assert browser.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
                drawn = browser.wait_for(PLOTS_DRAWN)
                assert {"plot-score", "plot-lineage", "plot-timeline"} <= set(drawn), drawn
                assert browser.evaluate(f"{COLUMN}('status')").count("RUNNING") == 1
                # The table sorts: by member, then the other way round.
                browser.evaluate(SORT_BY_MEMBER)
                members = browser.evaluate(f"{COLUMN}('member')")
                assert members == sorted(members, key=int) and len(members) == 5
                browser.evaluate(SORT_BY_MEMBER)
                descending = sorted(members, key=int, reverse=True)
                assert browser.evaluate(f"{COLUMN}('member')") == descending
                browser.evaluate("window.untouched = true")  # gone if the page reloads
                running.results["acc"] = 0.99
            # The job is DONE in the store: the page shows it without a reload, and
            # keeps the reader's sort.
            job = json.dumps(running.id)
            browser.wait_for(f"{COLUMN}('status')[{COLUMN}('id').indexOf({job})] === 'DONE'")
            assert browser.evaluate("window.untouched") is True
            assert browser.evaluate(f"{COLUMN}('member')") == descending
            assert browser.evaluate("document.getElementById('report-errors').textContent") == ""
            shot = browser.call("Page.captureScreenshot", page=True)["data"]
            assert len(base64.b64decode(shot)) > 50_000  # a page, not a blank
            assert browser.evaluate("document.querySelector('img[src=x]')") is None
            assert browser.problems() == []
    finally:
        browser.close()
