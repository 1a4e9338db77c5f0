"""``schedy server`` and its client: what the conformance suite cannot show.

The conformance suite already runs every storage test through a server
(``store_url``'s ``http`` backend). Here: the token, refusing to listen
beyond loopback without one, clear errors for a server that is down or is
not a schedy server, malformed requests, and the ``schedy server`` command
as users start and stop it.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server needs: pip install 'schedy[server]'")

import requests

import schedy
from schedy.errors import AuthenticationError, ServerError, StorageError
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
    monkeypatch.setattr(_http, "_CONNECT_RETRY_S", 0.2)
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
    env["SCHEDY_TOKEN"] = "cli-token"
    server, url = _start_cli_server(tmp_path, env=env)
    try:
        assert url.startswith("http://")
        with schedy.SchedyDB(url, token="cli-token") as db:
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


def test_create_app_takes_a_database_url_or_a_schedydb(
    tmp_path: Path, server_url: str, server_token: str
) -> None:
    from schedy.server import create_app

    assert create_app(f"sqlite:///{tmp_path}/a.db").title == "schedy"
    with schedy.SchedyDB(f"sqlite:///{tmp_path}/b.db") as db:
        assert create_app(db, token="t").title == "schedy"
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
    # until the server is back (up to 10 s), so a restart does not fail jobs.
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
        with start_server(database, port=port):
            back.set()
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
    env["SCHEDY_TOKEN"] = "tls-token"
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
            schedy.SchedyDB(url, token="tls-token")  # an unknown CA is refused
        with schedy.SchedyDB(url, token="tls-token", verify=str(tmp_path / "ca.pem")) as db:
            db.add_experiment(schedy.ManualSearch("m"))
            db.get_experiment("m").add_job({"x": 1})
            assert [job.hyperparameters for job in db.get_experiment("m").all_jobs()] == [{"x": 1}]
        with pytest.raises(StorageError, match="cannot reach"):  # plain HTTP gets nothing
            schedy.SchedyDB(url.replace("https", "http"), token="tls-token")
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


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
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
        client = _http.HTTPStorage(url, token=server_token)
        with pytest.raises(expected) as caught:
            client.get_experiment("any")
        assert str(raised) in str(caught.value)
        client.close()


def test_the_client_knows_every_error_name_the_server_sends() -> None:
    from schedy.server import _app

    sent = {kind.__name__ for kind in _app._STATUS} | {"AuthenticationError"}
    assert sent <= set(_http._ERRORS)
