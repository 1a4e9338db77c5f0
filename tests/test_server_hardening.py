"""``schedy server`` under careless or hostile requests.

A server reachable by many machines meets clients that have no token, send
bodies far larger than any job, nest JSON a thousand levels deep, or ask for
``k = 2**63``. Each test here was written before its fix and failed then:

* without a token a request costs the server its headers and nothing more:
  it is refused (401) before its body is read, so an unauthenticated flood
  of large uploads leaves the server's memory flat (measured, not assumed);
* bodies are capped (413 in the error JSON, with or without Content-Length)
  and so is their nesting (400 naming the limit);
* no answer shows the server's insides (paths, exception reprs, private
  class names): a bug is logged in full and answered in general terms;
* user input never gets a 5xx (integer parameters are bounded), and a 500
  that does happen leaves the kept-alive connection usable;
* the docs are no more open than the API, and the OpenAPI document says
  what the server really answers.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server needs: pip install 'schedy[server]'")

import requests
import uvicorn

import schedy
from schedy.server import create_app
from schedy.storage._sql import SQLStorage

#: The bootstrap token of the servers these tests start (the conftest's one).
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
API = "/api/v1"


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` on a free loopback port in a thread; yield its URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="schedy-hardening-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # uvicorn offers a flag, not an event, for this
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test schedy server did not start")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    store = SQLStorage(f"sqlite:///{tmp_path}/served.db")
    yield store
    store.close()


@pytest.fixture
def url(storage: SQLStorage) -> Iterator[str]:
    """A server over a fresh SQLite store holding ManualSearch ``m`` with one job."""
    with schedy.SchedyDB(storage.url) as db:
        db.add_experiment(schedy.ManualSearch("m"))
        db.get_experiment("m").add_job({"x": 1})
    with serving(create_app(storage, TOKEN, max_body_bytes=4096)) as served:
        yield served


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _raw(url: str, head: bytes, *, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (a request line and headers, no body) and read the answer:
    the server must answer without the body the headers announce."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=timeout) as connection:
        connection.sendall(head)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


def _no_internals(text: str) -> None:
    """Nothing of the server's insides in an answer: no paths, reprs or tracebacks."""
    for leak in ("Traceback", 'File "', ".py", "/work", "site-packages", "Error(", '"detail"'):
        assert leak not in text, (leak, text)


# -- 1. a request without a token costs nothing ------------------------------------
def test_without_a_token_a_malformed_body_is_refused_not_parsed(url: str) -> None:
    for body in (b"{not json", b"[" * 5000, b"\xff\xfe"):
        answer = requests.post(
            f"{url}{API}/claim", params={"experiment": "m"}, data=body, timeout=10
        )
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["type"] == "AuthenticationError"
        _no_internals(answer.text)


def test_without_a_token_the_body_is_never_read(url: str) -> None:
    # 100 MB announced, none sent: the 401 comes at once, before any body byte.
    status, _, body = _raw(
        url,
        f"POST {API}/claim?experiment=m HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n".encode(),
        timeout=5,
    )
    assert status == 401
    assert json.loads(body)["error"]["type"] == "AuthenticationError"


def test_with_a_wrong_token_the_body_is_never_read_either(url: str) -> None:
    status, _, _ = _raw(
        url,
        f"POST {API}/jobs?experiment=m HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode(),
        timeout=5,
    )
    assert status == 401


# -- bodies: size and depth ----------------------------------------------------------
def test_a_body_over_the_limit_is_a_413_before_it_is_read(url: str) -> None:
    status, _, body = _raw(
        url,
        f"POST {API}/jobs?experiment=m HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 4097\r\n\r\n".encode(),
        timeout=5,
    )
    assert status == 413
    error = json.loads(body)["error"]
    assert "4 KiB" in error["message"] or "4096 bytes" in error["message"], error
    _no_internals(error["message"])


def test_a_chunked_body_is_cut_at_the_limit(url: str) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"hyperparameters": {"pad": "'
        for _ in range(64):
            yield b"x" * 512
        yield b'"}}'

    answer = requests.post(
        f"{url}{API}/jobs", params={"experiment": "m"}, data=chunks(), headers=AUTH, timeout=10
    )
    assert answer.status_code == 413, answer.text
    assert "larger than" in answer.json()["error"]["message"]
    # A body at the limit is fine.
    padding = 4096 - len(json.dumps({"hyperparameters": {"pad": ""}}))
    exact = json.dumps({"hyperparameters": {"pad": "x" * padding}}).encode()
    assert len(exact) == 4096
    answer = requests.post(
        f"{url}{API}/jobs", params={"experiment": "m"}, data=exact, headers=AUTH, timeout=10
    )
    assert answer.status_code == 201, answer.text


def test_the_default_limit_is_16_mib(storage: SQLStorage) -> None:
    with serving(create_app(storage, TOKEN)) as served:
        status, _, body = _raw(
            served,
            f"POST {API}/jobs?experiment=m HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
            f"\r\nContent-Length: {16 * 2**20 + 1}\r\n\r\n".encode(),
        )
    assert status == 413 and "16 MiB" in json.loads(body)["error"]["message"]
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(storage, TOKEN, max_body_bytes=0)


def test_a_deeply_nested_body_is_a_400_naming_the_limit(url: str) -> None:
    body = '{"hyperparameters": {"a": ' + "[" * 900 + "]" * 900 + "}}"
    answer = requests.post(
        f"{url}{API}/jobs", params={"experiment": "m"}, data=body, headers=AUTH, timeout=10
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "ValueError"
    assert "nests deeper than 100 levels" in error["message"]
    _no_internals(error["message"])


def test_a_deep_body_within_the_size_limit(storage: SQLStorage) -> None:
    with schedy.SchedyDB(storage.url) as db:
        db.add_experiment(schedy.ManualSearch("m"))
    with serving(create_app(storage, TOKEN)) as served:
        for depth in (900, 100_000, 1_000_000):
            body = '{"results": {"a": ' + "[" * depth + "]" * depth + "}}"
            answer = requests.post(
                f"{served}{API}/jobs",
                params={"experiment": "m"},
                data=body,
                headers=AUTH,
                timeout=30,
            )
            assert answer.status_code == 400, answer.text
            assert "nests deeper than 100 levels" in answer.json()["error"]["message"]
        # Brackets inside strings are text, not nesting.
        text = '{"results": {"a": "' + "[" * 1000 + '"}}'
        answer = requests.post(
            f"{served}{API}/jobs", params={"experiment": "m"}, data=text, headers=AUTH, timeout=10
        )
        assert answer.status_code == 201, answer.text


# -- no internals in any answer --------------------------------------------------------
class _Broken(SQLStorage):
    """Every ``get_experiment`` fails the way a bug does."""

    def get_experiment(self, name: str) -> Any:
        raise RuntimeError(f"secret detail of {__file__}")


def test_a_bug_is_logged_in_full_and_answered_in_general_terms(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = _Broken(f"sqlite:///{tmp_path}/s.db")
    try:
        with serving(create_app(storage, TOKEN)) as served, caplog.at_level(logging.ERROR):
            answer = requests.get(
                f"{served}{API}/experiment", params={"name": "m"}, headers=AUTH, timeout=10
            )
    finally:
        storage.close()
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["type"] == "ServerError"
    assert "RuntimeError" not in error["message"] and "secret" not in error["message"]
    assert "logged" in error["message"]
    _no_internals(answer.text)
    logged = "\n".join(record.getMessage() + str(record.exc_info) for record in caplog.records)
    assert "secret detail" in logged and "GET /api/v1/experiment" in logged


def test_no_answer_says_where_the_database_is(url: str, storage: SQLStorage) -> None:
    # A storage error names the store for whoever opened it; over the server
    # its path (or a database server's host and user) is "the server's database".
    with (
        schedy.SchedyDB(url, token=TOKEN) as db,
        pytest.raises(schedy.errors.ResourceExistsError) as caught,
    ):
        db.add_experiment(schedy.ManualSearch("m"))
    message = str(caught.value)
    assert "the server's database" in message, message
    path = storage.url.split("///", 1)[1]
    assert path not in message and "sqlite:" not in message


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", f"{API}/nowhere", 404),
        ("DELETE", f"{API}/experiments", 405),
        ("POST", f"{API}/health", 405),
    ],
)
def test_routing_errors_come_in_the_error_json(
    url: str, method: str, path: str, status: int
) -> None:
    answer = requests.request(method, f"{url}{path}", headers=AUTH, timeout=10)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}
    _no_internals(answer.text)
    # Without a token, an unknown path tells nothing either: 401 like any other.
    if path != f"{API}/health":
        assert requests.request(method, f"{url}{path}", timeout=10).status_code == 401


def test_malformed_json_with_a_token_is_a_400_without_internals(url: str) -> None:
    for body in (b"{not json", b"\xff\xfe", b'{"lease_seconds": 1e999999}', b"[1, 2"):
        answer = requests.post(
            f"{url}{API}/claim", params={"experiment": "m"}, data=body, headers=AUTH, timeout=10
        )
        assert answer.status_code == 400, (body, answer.text)
        assert set(answer.json()) == {"error"}
        _no_internals(answer.text)


# -- 3. user input never gets a 5xx --------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    database = (
        f"sqlite:///{tmp_path}/b.db"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    storage = SQLStorage(database)
    try:
        with schedy.SchedyDB(database) as db:
            db.add_experiment(schedy.ManualSearch("m"))
        with serving(create_app(storage, TOKEN)) as served:
            yield served
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("path", "name"), [("top-jobs", "k"), ("jobs-in-use", "top_k"), ("jobs", "limit")]
)
@pytest.mark.parametrize("value", [2**63, 2**64 + 1, 10**30, 10_001, -1, "1e3", "NaN"])
def test_integer_parameters_are_bounded(
    backend_url: str, path: str, name: str, value: object
) -> None:
    answer = requests.get(
        f"{backend_url}{API}/{path}",
        params={"experiment": "m", name: str(value)},
        headers=AUTH,
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "ValueError" and name in error["message"]
    _no_internals(error["message"])
    within = requests.get(
        f"{backend_url}{API}/{path}",
        params={"experiment": "m", name: "10000"},
        headers=AUTH,
        timeout=10,
    )
    assert within.status_code == 200, within.text


def test_what_the_fuzzer_found_is_a_4xx(backend_url: str) -> None:
    # A NUL in a job id PostgreSQL could not compare (503), a bool read as a
    # number of seconds (accepted): found by tests/test_server_fuzz.py.
    answer = requests.get(
        f"{backend_url}{API}/jobs",
        params={"experiment": "m", "after": "a\x00b"},
        headers=AUTH,
        timeout=10,
    )
    assert answer.status_code == 404, answer.text
    for body in ({"lease_seconds": True}, {"lease_seconds": "60"}, {"lease_seconds": 1e400}):
        answer = requests.post(
            f"{backend_url}{API}/claim",
            params={"experiment": "m"},
            data=json.dumps(body),
            headers=AUTH,
            timeout=10,
        )
        assert answer.status_code == 400, (body, answer.text)
        assert "lease_seconds" in answer.json()["error"]["message"]


def test_the_body_rules_hold_on_the_client_too() -> None:
    from schedy import _wire

    with pytest.raises(ValueError, match="lease_seconds must be a finite number > 0"):
        _wire.ClaimRequest(lease_seconds=0)
    with pytest.raises(
        ValueError, match="a claim's request id must have at least 1 and at most 64"
    ):
        _wire.ClaimRequest(lease_seconds=1, request_id="x" * 65)
    with pytest.raises(ValueError, match="a lease token may not contain a NUL"):
        _wire.LeaseRenewal(lease_token="a\x00", lease_seconds=1)
    with pytest.raises(ValueError, match="cannot be added RUNNING"):
        _wire.NewJob.of("RUNNING", {}, {})
    with pytest.raises(ValueError, match="an experiment name may not be blank"):
        _wire.NewExperiment(name=" \x1c", kind="manual", status="RUNNING", config={})
    document = create_app("sqlite://", TOKEN).openapi()["components"]["schemas"]
    lease = document["ClaimRequest"]["properties"]["lease_seconds"]
    assert lease["exclusiveMinimum"] == 0 and lease["maximum"] == 7 * 24 * 3600
    assert document["NewJob"]["properties"]["status"]["enum"] == [
        "QUEUED",
        "CRASHED",
        "PRUNED",
        "DONE",
    ]


# -- 4. a 500 leaves the connection usable -----------------------------------------------
def test_after_a_500_the_kept_alive_connection_still_works(tmp_path: Path) -> None:
    storage = _Broken(f"sqlite:///{tmp_path}/s.db")
    try:
        with serving(create_app(storage, TOKEN)) as served:
            connection = http.client.HTTPConnection("127.0.0.1", _port(served), timeout=10)
            statuses, errors = [], 0
            connection.connect()
            sock = connection.sock
            for index in range(51):
                path = f"{API}/experiment?name=m" if index % 2 == 0 else f"{API}/experiments"
                try:
                    connection.request("GET", path, headers=AUTH)
                    answer = connection.getresponse()
                    answer.read()
                    statuses.append(answer.status)
                    assert (answer.getheader("connection") or "").lower() != "close"
                except (ConnectionError, http.client.HTTPException):
                    errors += 1
                    connection.close()
            assert connection.sock is sock  # one connection all along
            connection.close()
    finally:
        storage.close()
    assert errors == 0
    assert statuses[0] == 500 and statuses.count(500) == 26 and statuses.count(200) == 25


# -- 2. the docs are no more open than the API ---------------------------------------------
DOCS = ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]


@pytest.mark.parametrize("path", DOCS)
def test_the_docs_need_the_token_like_the_api(url: str, path: str) -> None:
    refused = requests.get(f"{url}{path}", timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "AuthenticationError"
    assert requests.get(f"{url}{path}", headers=AUTH, timeout=10).status_code == 200


def test_a_server_without_tokens_shows_its_docs_to_this_machine(storage: SQLStorage) -> None:
    with serving(create_app(storage)) as served:
        for path in DOCS:
            assert requests.get(f"{served}{path}", timeout=10).status_code == 200


# -- 5. the OpenAPI document says what the server does ------------------------------------
def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_the_openapi_document_describes_answers_statuses_and_the_token(
    storage: SQLStorage,
) -> None:
    document = create_app(storage, TOKEN).openapi()
    schemes = document["components"]["securitySchemes"]
    assert [scheme["scheme"] for scheme in schemes.values()] == ["bearer"]
    assert "HTTPValidationError" not in json.dumps(document)
    found = {(method, path) for method, path, _ in _operations(document)}
    assert ("POST", f"{API}/claim") in found and ("GET", f"{API}/health") in found
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        success = next(code for code in responses if code.startswith("2"))
        content = responses[success]["content"]["application/json"]["schema"]
        assert content != {"type": "string"} and content, (method, path, content)
        if path == f"{API}/health":
            assert operation.get("security") in (None, [])
            continue
        assert operation["security"] == [{name: []} for name in schemes], (method, path)
        for status in ("400", "401", "413", "503"):
            assert status in responses, (method, path, status)
        takes_a_name = (
            any(
                parameter["name"] in ("experiment", "name") for parameter in operation["parameters"]
            )
            if "parameters" in operation
            else False
        )
        if takes_a_name:
            assert "404" in responses, (method, path)
        if method != "GET":
            assert "403" in responses, (method, path)
        for code, answer in responses.items():
            if not code.startswith("2"):
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorAnswer"), (method, path, code)
    assert "409" in document["paths"][f"{API}/experiments"]["post"]["responses"]
    assert "409" in document["paths"][f"{API}/job"]["patch"]["responses"]
    job = document["components"]["schemas"]["JobRecord"]
    assert {"id", "status", "hyperparameters", "results", "lease_token"} <= set(job["properties"])


# -- 1. memory under an unauthenticated flood ---------------------------------------------
def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _upload(port: int, size: int, chunked: bool) -> int:
    """Send ``size`` bytes as one POST without a token, then read the status."""
    block = b"x" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        connection.sendall(
            f"POST {API}/jobs?experiment=m HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
        )
        sent = 0
        try:
            while sent < size:
                if chunked:
                    connection.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    connection.sendall(block)
                sent += len(block)
            if chunked:
                connection.sendall(b"0\r\n\r\n")
        except OSError:  # the server may close once it answered: also fine
            pass
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status


def _wait_until_up(port: int) -> None:
    """The port is bound before it is announced, but listens only once uvicorn runs."""
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}{API}/health", timeout=10).raise_for_status()
            return
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


#: The bound checked: the server's peak RSS may grow by at most this much
#: while 8 clients without a token upload 100 MB each (measured: see the report).
FLOOD_GROWTH_LIMIT_MIB = 64


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_an_unauthenticated_flood_of_large_bodies_leaves_memory_flat(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SCHEDY_URL",)}
    env["SCHEDY_TOKEN"] = TOKEN
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schedy",
            "--db",
            f"sqlite:///{tmp_path}/s.db",
            "server",
            "--port",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        _wait_until_up(port)
        before = _peak_rss_kib(server.pid)
        statuses: list[int] = []
        threads = [
            threading.Thread(
                target=lambda chunked=index % 2 == 1: statuses.append(
                    _upload(port, 100 * 2**20, chunked)
                )
            )
            for index in range(8)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        took = time.monotonic() - started
        after = _peak_rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    growth_mib = (after - before) / 1024
    print(f"peak RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB over 8 x 100 MB in {took:.1f} s")
    assert statuses == [401] * 8
    assert growth_mib < FLOOD_GROWTH_LIMIT_MIB, growth_mib
