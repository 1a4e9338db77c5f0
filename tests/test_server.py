"""``schedy server`` and its client: what the conformance suite cannot show.

The conformance suite already runs every storage test through a server
(``store_url``'s ``http`` backend). Here: the token, refusing to listen
beyond loopback without one, clear errors for a server that is down or is
not a schedy server, malformed requests, and the ``schedy server`` command
as users start and stop it, the one error table both sides use, and how
the client fails or retries when the connection does (``_wire``, urllib3's
``Retry``).
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server needs: pip install 'schedy[server]'")

import requests

import schedy
from schedy import _wire
from schedy.errors import AuthenticationError, SchedyError, ServerError, StorageError
from schedy.server import serve
from schedy.storage import _http, _sql
from schedy.storage._sql import SQLStorage


def _pbt() -> schedy.PopulationBasedTraining:
    return schedy.PopulationBasedTraining(
        "pbt",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(1e-4, 1e-1)},
        population_size=2,
        seed=0,
    )


def test_every_call_but_health_needs_the_token(server_url: str, server_token: str) -> None:
    assert requests.get(f"{server_url}/api/v1/health", timeout=10).json()["schedy"]
    refused = requests.get(f"{server_url}/api/v1/experiments", timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "AuthenticationError"
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (
        requests.get(f"{server_url}/api/v1/experiments", headers=wrong, timeout=10).status_code
        == 401
    )
    with pytest.raises(AuthenticationError, match=r"refused the token.*\$SCHEDY_TOKEN"):
        schedy.SchedyDB(server_url)  # no token: refused at once, not at the first job
    with pytest.raises(AuthenticationError):
        schedy.SchedyDB(server_url, token="not-the-token")
    with schedy.SchedyDB(server_url, token=server_token) as db:
        db.add_experiment(_pbt())
        assert [e.name for e in db.get_experiments()] == ["pbt"]


def test_token_from_the_environment(
    server_url: str, server_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDY_TOKEN", server_token)
    with schedy.SchedyDB(server_url) as db:
        db.add_experiment(schedy.ManualSearch("m"))
        assert db.get_experiment("m").name == "m"


def test_names_with_any_character_and_nan_results(server_url: str, server_token: str) -> None:
    with schedy.SchedyDB(server_url, token=server_token) as db:
        name = "a/b ?&#% é"
        db.add_experiment(schedy.ManualSearch(name))
        experiment = db.get_experiment(name)
        job = experiment.add_job({"x": 1}, results={"loss": float("nan"), "up": float("inf")})
        again = experiment.get_job(job.id)
        assert again.results["loss"] != again.results["loss"]  # NaN
        assert again.results["up"] == float("inf")
        with pytest.raises(schedy.errors.NotFoundError, match="no job 'x/y'"):
            experiment.get_job("x/y")


def test_malformed_requests_get_a_clear_400(server_url: str, server_token: str) -> None:
    headers = {"Authorization": f"Bearer {server_token}"}
    answer = requests.post(
        f"{server_url}/api/v1/claim",
        params={"experiment": "pbt"},
        data="{not json",
        headers=headers,
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "ValueError"
    missing = requests.post(
        f"{server_url}/api/v1/claim", json={"lease_seconds": 5}, headers=headers, timeout=10
    )
    assert missing.status_code == 400 and "experiment" in missing.json()["error"]["message"]


def test_a_server_that_is_down_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "_RETRY_S", 0.2)
    with pytest.raises(StorageError, match=r"cannot reach the schedy server .*nothing was written"):
        schedy.SchedyDB("http://127.0.0.1:1")


class _NotSchedy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>nothing here</html>")

    def log_message(self, *args: object) -> None:
        pass


def test_a_url_that_is_not_a_schedy_server() -> None:
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotSchedy)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServerError, match="is it a schedy server"):
            schedy.SchedyDB(f"http://127.0.0.1:{other.server_address[1]}")
    finally:
        other.shutdown()
        other.server_close()


def test_no_token_only_on_loopback(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    try:
        with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0 without a token"):
            serve(storage, host="0.0.0.0", port=0)
    finally:
        storage.close()


def _cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "schedy", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["server", "--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without a token"),
        (["--db", "http://127.0.0.1:9", "server"], "serves a database"),
        (["server", "--port", "70000"], "--port must be between 0 and 65535"),
    ],
)
def test_server_command_refuses_bad_settings(tmp_path: Path, args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SCHEDY_TOKEN", "SCHEDY_URL")}
    done = _cli(*args, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def _start_cli_server(tmp_path: Path, *options: str, env: dict[str, str]) -> tuple[Any, str]:
    """``schedy server --port 0 OPTIONS`` as a process, and the URL it announced."""
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
            *options,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    seen = []
    for line in server.stderr:  # the announcement comes once the port is bound
        seen.append(line)
        found = re.search(r"on (https?://127\.0\.0\.1:\d+) \(", line)
        if found:
            return server, found.group(1)
    server.wait()
    raise AssertionError("".join(seen))


@pytest.mark.slow
def test_server_command_serves_workers_until_stopped(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SCHEDY_URL"}
    env["SCHEDY_TOKEN"] = "cli-token-0123456789"
    server, url = _start_cli_server(tmp_path, env=env)
    try:
        assert url.startswith("http://")
        with schedy.SchedyDB(url, token="cli-token-0123456789") as db:
            db.add_experiment(_pbt())
            experiment = db.get_experiment("pbt")
            for _ in range(4):
                with experiment.next_job() as job:
                    job.results["acc"] = job.hyperparameters["lr"]
            assert all((m.head_generation or 0) >= 1 for m in experiment.population())
        listed = _cli("--db", url, "list", "pbt", env=env, cwd=tmp_path)
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 4
        server.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert server.wait(timeout=30) == 0, server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # Everything went through the server into its database.
    with schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db") as db:
        assert len(list(db.get_experiment("pbt").all_jobs())) == 4


def test_the_listening_socket_lets_asyncio_disable_nagle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP;
    # without it each response waited ~40 ms for a delayed ACK (95 ms cycles).
    import socket

    import uvicorn

    seen: list[socket.socket] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: seen.extend(sockets))
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    lines: list[str] = []
    try:
        serve(storage, port=0, announce=lines.append)
    finally:
        storage.close()
    (listener,) = seen
    assert listener.proto == socket.IPPROTO_TCP
    assert re.search(r"on http://127\.0\.0\.1:\d+ \(no token: this machine only", lines[0])


def test_idle_connections_outlive_the_workers_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uvicorn closes idle keep-alive connections after 5 s by default. A worker
    # renews its lease every lease/3 s (20 s): each heartbeat then found its pooled
    # connection closed, and with 1,000 workers (benchmarks/fleet.py) hundreds of
    # requests raced the close and failed with "Connection reset by peer".
    import uvicorn

    configs: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: configs.append(self.config))
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    try:
        serve(storage, port=0, announce=lambda line: None)
    finally:
        storage.close()
    (config,) = configs
    assert config.timeout_keep_alive > 60.0 / 3  # the default lease's heartbeat interval


def test_create_app_takes_a_database_url_or_a_schedydb(
    tmp_path: Path, server_url: str, server_token: str
) -> None:
    from schedy.server import create_app

    assert create_app(f"sqlite:///{tmp_path}/a.db").title == "schedy"
    with schedy.SchedyDB(f"sqlite:///{tmp_path}/b.db") as db:
        assert create_app(db, token="a-long-enough-token").title == "schedy"
    with (
        schedy.SchedyDB(server_url, token=server_token) as remote,
        pytest.raises(ValueError, match="serves a database"),
    ):
        create_app(remote)


def test_a_restarting_server_is_waited_for(
    tmp_path: Path,
    start_server: Callable[..., AbstractContextManager[str]],
    server_token: str,
) -> None:
    # A request that was refused never reached the server: it is retried
    # until the server is back (up to retry_seconds), so a restart does not fail jobs.
    database = f"sqlite:///{tmp_path}/s.db"
    with start_server(database) as url:
        db = schedy.SchedyDB(url, token=server_token)
        db.add_experiment(schedy.ManualSearch("m"))
        experiment = db.get_experiment("m")
        experiment.add_job({"x": 1})
    port = int(url.rsplit(":", 1)[1])  # down now: connections are refused
    back, stop = threading.Event(), threading.Event()

    def restart_later() -> None:
        time.sleep(0.3)  # the outage being simulated
        back.set()  # before the server starts: a claim may complete as soon as it listens
        with start_server(database, port=port):
            stop.wait(30)

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    try:
        with experiment.next_job() as job:
            assert back.is_set()  # it waited for the server instead of failing
            job.results["y"] = 2
        assert experiment.get_job(job.id).status == schedy.Job.DONE
    finally:
        stop.set()
        restarter.join(timeout=30)
        db.close()


@pytest.mark.slow
def test_https_with_a_certificate(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    env = {k: v for k, v in os.environ.items() if k not in ("SCHEDY_URL", "REQUESTS_CA_BUNDLE")}
    env["SCHEDY_TOKEN"] = "tls-token-0123456789"
    options = (
        "--ssl-certfile",
        str(tmp_path / "cert.pem"),
        "--ssl-keyfile",
        str(tmp_path / "key.pem"),
    )
    server, url = _start_cli_server(tmp_path, *options, env=env)
    try:
        assert url.startswith("https://")
        with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED"):
            schedy.SchedyDB(url, token="tls-token-0123456789")  # an unknown CA is refused
        with schedy.SchedyDB(
            url, token="tls-token-0123456789", verify=str(tmp_path / "ca.pem")
        ) as db:
            db.add_experiment(schedy.ManualSearch("m"))
            db.get_experiment("m").add_job({"x": 1})
            assert [job.hyperparameters for job in db.get_experiment("m").all_jobs()] == [{"x": 1}]
        with pytest.raises(StorageError, match="cannot reach"):  # plain HTTP gets nothing
            # (not retried: the client would retry a lost answer for 300 s by default)
            schedy.SchedyDB(
                url.replace("https", "http"), token="tls-token-0123456789", retry_seconds=0
            )
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ssl-certfile", "cert.pem"], "needs both a certificate and its key"),
        (["--ssl-certfile", "nope.pem", "--ssl-keyfile", "nope.pem"], "no such file: nope.pem"),
        (["--ssl-certfile", "junk.pem", "--ssl-keyfile", "junk.pem"], "cannot use the certificate"),
    ],
)
def test_https_settings_are_checked(tmp_path: Path, options: list[str], message: str) -> None:
    (tmp_path / "cert.pem").write_text("")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SCHEDY_TOKEN", "SCHEDY_URL")}
    done = _cli("server", "--port", "0", *options, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_the_announcement_hides_the_database_password(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: None)
    with_password = sa.engine.make_url(postgres_url).set(password="s3cret-pw")
    lines: list[str] = []
    serve(with_password.render_as_string(hide_password=False), port=0, announce=lines.append)
    assert "s3cret-pw" not in lines[0] and "***" in lines[0]


class _FailingStorage(SQLStorage):
    """Serves a database, but every get_experiment raises ``error``."""

    error: Exception = RuntimeError()

    def get_experiment(self, name: str) -> Any:
        raise self.error


#: Every entry of the wire's error table, raised as itself by the storage.
_TABLE_CASES = [(entry.kind(f"sent as {entry.name}"), entry.kind) for entry in _wire.ERRORS]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        *_TABLE_CASES,
        (schedy.errors.NotFoundError("gone"), schedy.errors.NotFoundError),
        (schedy.errors.ResourceExistsError("taken"), schedy.errors.ResourceExistsError),
        (schedy.errors.UnsafeUpdateError("lease lost"), schedy.errors.UnsafeUpdateError),
        (schedy.errors.SchemaVersionError("newer"), schedy.errors.SchemaVersionError),
        (StorageError("locked"), StorageError),
        (_sql._CommitLost("commit lost"), StorageError),
        (_sql._IntegrityConflict("clash"), StorageError),
        (ValueError("bad value"), ValueError),
        (TypeError("bad type"), TypeError),
        (RuntimeError("a bug"), ServerError),
        (schedy.errors.NoJobError("not a storage error"), ServerError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_every_error_the_server_sends_is_raised_as_itself(
    tmp_path: Path,
    start_server: Callable[..., AbstractContextManager[str]],
    server_token: str,
    raised: Exception,
    expected: type[Exception],
) -> None:
    storage = _FailingStorage(f"sqlite:///{tmp_path}/s.db")
    storage.error = raised
    with start_server(storage) as url:
        # No retries: a read answered 503 (a StorageError) is retried otherwise.
        client = _http.HTTPStorage(url, token=server_token, retry_seconds=0)
        with pytest.raises(expected) as caught:
            client.get_experiment("any")
        assert type(caught.value) is expected  # not merely a subclass of it
        if isinstance(raised, (SchedyError, ValueError, TypeError)):
            assert str(raised) in str(caught.value)
        else:  # a bug: logged by the server, never shown (no internals in an answer)
            assert str(raised) not in str(caught.value)
            assert type(raised).__name__ not in str(caught.value)
            assert "logged" in str(caught.value)
        client.close()
        # What travelled is the table's name and status for that class.
        answer = requests.get(
            f"{url}{_wire.API_PREFIX}/experiment",
            params={"name": "any"},
            headers={"Authorization": f"Bearer {server_token}"},
            timeout=10,
        )
        entry = next(entry for entry in _wire.ERRORS if entry.kind is expected)
        assert answer.status_code == entry.status
        assert answer.json()["error"]["type"] == entry.name


def test_the_client_knows_every_error_name_the_server_sends() -> None:
    # One table for both sides: most specific class first, so a subclass is
    # never shadowed by its base, each name once, and each decodes to its class.
    names = [entry.name for entry in _wire.ERRORS]
    assert len(set(names)) == len(names)
    for index, later in enumerate(_wire.ERRORS):
        for earlier in _wire.ERRORS[:index]:
            assert not issubclass(later.kind, earlier.kind), (later, earlier)
    # What the server sends besides storage errors: a refused token, a bug, a bad request.
    sent = {"AuthenticationError", "ServerError", "ValueError"} | {
        kind.__name__ for kind in (StorageError, schedy.errors.SchemaVersionError)
    }
    assert sent <= set(names)
    for entry in _wire.ERRORS:
        status, body = _wire.encode_error(entry.kind("why"))
        assert status == entry.status
        decoded = _wire.decode_error(status, _wire.decode(_wire.encode(body)))
        assert type(decoded) is entry.kind and str(decoded) == "why"
    assert type(_wire.decode_error(500, {"error": {"type": "Unheard", "message": "m"}})) is (
        ServerError
    )
    assert _wire.decode_error(502, "<html>") is None


def test_records_survive_the_wire_and_unknown_fields_are_ignored() -> None:
    from schedy._records import Claim, JobRecord, MemberRecord

    job = JobRecord("j", "e", "RUNNING", {"lr": 0.1}, {"loss": float("inf")}, member=1)
    sent = _wire.decode(_wire.encode({**_wire.encode_job(job), "added_later": 1}))
    assert _wire.decode_job(sent) == job
    claim = Claim(job, wait=False, reason="")
    assert _wire.decode_claim(_wire.decode(_wire.encode(_wire.encode_claim(claim)))) == claim
    member = MemberRecord(0, head_id="j", score=0.5)
    assert _wire.decode_members([_wire.encode_member(member)]) == [member]
    retired = member._replace(ended=True, ended_reason="straggler: nothing to copy")
    assert _wire.decode_members([_wire.encode_member(retired)]) == [retired]
    # A server from before ended_reason sends none: read as unknown, not refused.
    older = {k: v for k, v in _wire.encode_member(retired).items() if k != "ended_reason"}
    assert _wire.decode_members([older]) == [retired._replace(ended_reason=None)]
    with pytest.raises(ServerError, match="incomplete record"):
        _wire.decode_job({"id": "j"})
    with pytest.raises(ServerError, match="not an object"):
        _wire.decode_experiment([1])


# -- the connection: what is retried, and what each failure says ---------------
@contextmanager
def _raw_server(answer: Callable[[socket.socket], None]) -> Iterator[tuple[str, list[int]]]:
    """A TCP server on loopback: ``answer(connection)`` for each connection;
    yields its URL and a list that counts the connections it accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            with connection:
                connection.settimeout(10)
                with suppress(OSError):
                    answer(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def _read_request(connection: socket.socket) -> None:
    seen = b""
    while b"\r\n\r\n" not in seen:
        chunk = connection.recv(65536)
        if not chunk:
            return
        seen += chunk


def _hang_up(connection: socket.socket) -> None:
    _read_request(connection)  # and close without a word


def test_a_lost_answer_with_no_retry_left_says_it_may_have_taken_effect() -> None:
    # (What is retried after a lost answer, and what not: tests/test_resilience.py.)
    with _raw_server(_hang_up) as (url, accepted):
        with pytest.raises(StorageError, match=r"GET /session .*may or may not have taken effect"):
            _http.HTTPStorage(url, retry_seconds=0)
        assert len(accepted) == 1


def test_a_read_timeout_says_so() -> None:
    def silent(connection: socket.socket) -> None:
        _read_request(connection)
        connection.recv(1)  # until the client gives up

    with _raw_server(silent) as (url, accepted):
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"did not answer GET /session within 0\.3 s"):
            _http.HTTPStorage(url, timeout=0.3, retry_seconds=0)
        assert time.monotonic() - started < 3
        assert len(accepted) == 1


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (b"Content-Length: 100\r\n", "was cut off"),  # and the connection closes
        (b"Content-Encoding: gzip\r\nContent-Length: 10\r\n", "could not be decompressed"),
    ],
    ids=["cut-off", "bad-gzip"],
)
def test_a_broken_answer_is_a_storage_error_not_a_requests_one(
    headers: bytes, message: str
) -> None:
    def broken(connection: socket.socket) -> None:
        _read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + headers)
        connection.sendall(b"\r\n{not gzip}")

    with _raw_server(broken) as (url, accepted):
        with pytest.raises(StorageError, match=f"{message}.*may or may not have taken effect"):
            _http.HTTPStorage(url, retry_seconds=0)
        assert len(accepted) == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_refused_connection_is_retried_for_retry_seconds() -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"connection refused, retried for 0\.6 s.*nothing was"):
        _http.HTTPStorage(url, retry_seconds=0.6)
    assert 0.6 <= time.monotonic() - started < 2.5
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"\(connection refused\)\..*nothing was written"):
        _http.HTTPStorage(url, retry_seconds=0)
    assert time.monotonic() - started < 0.5
    with pytest.raises(ValueError, match="retry_seconds"):
        _http.HTTPStorage(url, retry_seconds=-1)


@pytest.mark.skipif(
    sys.platform != "linux", reason="relies on Linux dropping SYNs past the backlog"
)
def test_a_connect_timeout_is_retried_too() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)  # never accepts
    port = listener.getsockname()[1]
    queued = [socket.socket() for _ in range(3)]  # fill the backlog: later SYNs are dropped
    for waiting in queued:
        waiting.setblocking(False)
        with suppress(BlockingIOError):
            waiting.connect(("127.0.0.1", port))
    try:
        started = time.monotonic()
        with pytest.raises(
            StorageError, match=r"no connection within 0\.2 s, retried for 0\.5 s.*nothing was"
        ):
            _http.HTTPStorage(f"http://127.0.0.1:{port}", timeout=0.2, retry_seconds=0.5)
        assert 0.7 <= time.monotonic() - started < 3  # the first timeout, then 0.5 s more
    finally:
        for waiting in queued:
            waiting.close()
        listener.close()
