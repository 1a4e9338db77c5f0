"""Server tokens with roles: ``schedy token`` and what each role may do.

One static token gave every worker the power to delete every experiment,
could not be revoked short of a restart, accepted one character, and showed
in ``ps`` when given as ``--token``. Now tokens live in the database (their
SHA-256, never the secret) with a role -- ``read`` (GET only: downloads of
artifacts too), ``worker`` (also claims, leases, job reports, artifact
uploads), ``admin`` (everything: deleting an artifact too) -- and the
bootstrap token given at start acts as admin. Checked here: every route
against every role (one table, written out by hand), revocation taking
effect, the bootstrap token's minimum strength, surrounding whitespace, and
``--token-file`` / the ``--token`` warning.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server needs: pip install 'schedy[server]'")

import requests
import uvicorn
from test_server_hardening import serving

import schedy
from schedy import _wire
from schedy.cli import main
from schedy.errors import AuthenticationError
from schedy.server import _auth, create_app, serve
from schedy.server._artifacts import ArtifactStore, open_store
from schedy.storage._sql import SQLStorage

BOOTSTRAP = "bootstrap-token-0123456789"
API = "/api/v1"


# -- the command ------------------------------------------------------------------
@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def schedy_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    def run(*args: str) -> Outcome:
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        code = main(list(args))
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def test_token_create_list_revoke(tmp_path: Path, schedy_cli: Any) -> None:
    db = f"sqlite:///{tmp_path}/s.db"  # a store that does not exist yet: created
    made = schedy_cli("--db", db, "token", "create", "--name", "gpu-1", "--role", "worker")
    assert made.code == 0, made.err
    secret = made.out.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)  # secrets.token_urlsafe(32)
    assert "gpu-1" in made.err and "worker" in made.err and "once" in made.err
    assert secret not in made.err
    default = schedy_cli("--db", db, "token", "create")
    assert default.code == 0 and default.out.strip() != secret
    storage = SQLStorage(db)
    try:
        found = storage.find_token(hashlib.sha256(secret.encode()).hexdigest())
        assert found is not None and (found.name, found.role) == ("gpu-1", "worker")
        assert [t.role for t in storage.list_tokens()] == ["worker", "worker"]
    finally:
        storage.close()
    listed = schedy_cli("--db", db, "token", "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert re.findall(r"\w+", header)[:4] == ["name", "role", "created", "revoked"]
    assert rows[0].split()[:2] == ["gpu-1", "worker"] and secret not in listed.out
    assert schedy_cli("--db", db, "token", "revoke", "gpu-1").code == 0
    assert rows[0].split()[-1] == "-"  # not revoked
    revoked = schedy_cli("--db", db, "token", "list").out.splitlines()[1]
    assert revoked.split()[:2] == ["gpu-1", "worker"] and revoked.split()[-1] != "-"
    again = schedy_cli("--db", db, "token", "revoke", "gpu-1")
    assert again.code == 1 and "no active token named 'gpu-1'" in again.err
    taken = schedy_cli("--db", db, "token", "create", "--name", "gpu-1")
    assert taken.code == 1 and "exists already" in taken.err
    admin = schedy_cli("--db", db, "token", "create", "--name", "me", "--role", "admin")
    assert admin.code == 0
    assert "Traceback" not in taken.err + again.err


def test_token_commands_refuse_a_server_url(schedy_cli: Any) -> None:
    for words in (["create", "--name", "x"], ["list"], ["revoke", "x"]):
        refused = schedy_cli("--db", "http://127.0.0.1:9", "token", *words)
        assert refused.code == 2
        assert "against the server's database" in refused.err, refused.err


@pytest.mark.parametrize(
    "words",
    [["token"], ["token", "create", "--role", "root"], ["token", "revoke"]],
    ids=["no-subcommand", "bad-role", "no-name"],
)
def test_token_usage_errors(tmp_path: Path, schedy_cli: Any, words: list[str]) -> None:
    outcome = schedy_cli("--db", f"sqlite:///{tmp_path}/s.db", *words)
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.err


def test_token_list_on_a_missing_store_is_an_error(tmp_path: Path, schedy_cli: Any) -> None:
    outcome = schedy_cli("--db", f"sqlite:///{tmp_path}/nope.db", "token", "list")
    assert outcome.code == 1 and "no schedy store" in outcome.err
    assert not (tmp_path / "nope.db").exists()


# -- every route against every role -------------------------------------------------
READ, WORKER, ADMIN = "read", "worker", "admin"
_RANK = {READ: 0, WORKER: 1, ADMIN: 2}

#: Each route and the least role that may call it, written out by hand.
ROUTES: list[tuple[str, str, str]] = [
    ("GET", f"{API}/session", READ),
    ("GET", f"{API}/experiments", READ),
    ("POST", f"{API}/experiments", ADMIN),
    ("GET", f"{API}/experiment", READ),
    ("PUT", f"{API}/experiment", ADMIN),
    ("DELETE", f"{API}/experiment", ADMIN),
    ("POST", f"{API}/jobs", WORKER),
    ("GET", f"{API}/jobs", READ),
    ("GET", f"{API}/job", READ),
    ("PATCH", f"{API}/job", WORKER),
    ("DELETE", f"{API}/job", ADMIN),
    ("POST", f"{API}/claim", WORKER),
    ("POST", f"{API}/lease", WORKER),
    ("GET", f"{API}/jobs-in-use", READ),
    ("GET", f"{API}/top-jobs", READ),
    ("GET", f"{API}/members", READ),
    # Checkpoints without shared storage (README): a read token downloads and lists,
    # a worker uploads, an admin deletes.
    ("GET", f"{API}/artifact-store", READ),
    ("GET", f"{API}/artifacts", READ),
    ("GET", f"{API}/artifact", READ),
    ("HEAD", f"{API}/artifact", READ),
    ("PUT", f"{API}/artifact", WORKER),
    ("DELETE", f"{API}/artifact", ADMIN),
    ("GET", "/openapi.json", READ),
    ("GET", "/docs", READ),
    ("GET", "/redoc", READ),
]
CALLERS = ["nobody", "wrong", "revoked", READ, WORKER, ADMIN, "bootstrap"]


@dataclass
class Served:
    url: str
    storage: SQLStorage
    secrets: dict[str, str]
    artifacts: ArtifactStore
    app: Any


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    database = f"sqlite:///{tmp_path_factory.mktemp('roles')}/roles.db"
    storage = SQLStorage(database)
    secrets = {"wrong": "not-a-token-of-this-server-at-all", "bootstrap": BOOTSTRAP}
    for role in (READ, WORKER, ADMIN, "revoked"):
        secret = f"secret-of-the-{role}-token-0123456789"
        storage.create_token(
            f"{role}-token", WORKER if role == "revoked" else role, _wire.hash_secret(secret)
        )
        secrets[role] = secret
    storage.revoke_token("revoked-token")
    # Artifacts on, as `schedy server` over a SQLite file has them by default.
    artifacts = open_store(str(tmp_path_factory.mktemp("artifacts")))
    app = create_app(storage, BOOTSTRAP, token_cache_seconds=0, artifacts=artifacts)
    with serving(app) as url:
        yield Served(url, storage, secrets, artifacts, app)
    storage.close()


def _upload(name: str, job_id: str, filename: str, content: bytes) -> Any:
    """The query of an upload of ``content`` as the job's artifact ``filename``."""
    sha256 = hashlib.sha256(content).hexdigest()
    return {
        "experiment": name,
        "job": job_id,
        "file": filename,
        "sha256": sha256,
        "size": len(content),
    }


def _request(served: Served, method: str, path: str, name: str) -> dict[str, Any]:
    """Arguments that make the call succeed for a caller allowed to make it,
    on an experiment of its own (``name``) holding a claimed and a queued job."""
    storage = served.storage
    record = schedy.ManualSearch(name)._record()
    storage.create_experiment(record)
    claimed = storage.add_job(name, "QUEUED", {"x": 1}, {})
    claim = storage.claim_job(name, 60.0)
    assert claim.job is not None and claim.job.id == claimed.id
    queued = storage.add_job(name, "QUEUED", {"x": 2}, {})
    stored = requests.put(  # an artifact to read or delete
        f"{served.url}{API}/artifact",
        params=_upload(name, queued.id, "model.pt", b"a checkpoint"),
        data=b"a checkpoint",
        headers={"Authorization": f"Bearer {BOOTSTRAP}"},
        timeout=10,
    )
    assert stored.status_code == 201, stored.text
    experiment = {"experiment": name}
    body: dict[str, Any] | None = None
    data: bytes | None = None
    params: dict[str, Any] = {}
    short = path.removeprefix(API)
    if short == "/experiments" and method == "POST":
        body = _wire.encode_experiment(schedy.ManualSearch(name + "-new")._record())
    elif short == "/experiment":
        params = {"name": name}
        if method == "PUT":
            body = _wire.body(_wire.ExperimentChange(status="DONE", config=record.config))
    elif short == "/jobs":
        params = experiment
        if method == "POST":
            body = _wire.body(_wire.NewJob.of("QUEUED", {"x": 3}, {}))
    elif short == "/job":
        params = {**experiment, "id": queued.id}
        if method == "PATCH":
            body = {"results": {"y": 1}}
    elif short == "/claim":
        params, body = experiment, {"lease_seconds": 60}
    elif short == "/lease":
        params = {**experiment, "id": claimed.id}
        body = {"lease_token": claim.job.lease_token, "lease_seconds": 60}
    elif short == "/jobs-in-use":
        params = {**experiment, "top_k": 1}
    elif short in ("/top-jobs",):
        params = {**experiment, "k": 1}
    elif short in ("/members", "/artifacts"):
        params = experiment
    elif short == "/artifact":
        params = {**experiment, "job": queued.id, "file": "model.pt"}
        if method == "PUT":
            data = b"another checkpoint"
            params = _upload(name, claimed.id, "new.pt", data)
    return {"params": params, "json": body, "data": data}


def _state(served: Served, name: str) -> Any:
    storage = served.storage
    names = [e.name for e in storage.list_experiments() if e.name.startswith(name)]
    if name not in names:
        return names
    stored = sorted(served.artifacts.list(name))
    return names, storage.get_experiment(name), storage.list_jobs(name), stored


def test_the_table_names_every_route(served: Served) -> None:
    """The served application's routes, artifacts on: a route added without a row
    in the table fails here (the HEADs Starlette adds beside a GET left out; the
    artifact route's own HEAD is a route of its own)."""
    routes = {
        (method, route.path)
        for route in served.app.routes
        for method in getattr(route, "methods", ()) or ()
        if (method != "HEAD" or "GET" not in route.methods) and route.path != f"{API}/health"
    }
    assert ("HEAD", f"{API}/artifact") in routes
    assert routes == {(method, path) for method, path, _ in ROUTES} | {
        ("GET", "/docs/oauth2-redirect")
    }


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("method", "path", "needed"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES]
)
def test_every_route_for_every_role(
    served: Served, method: str, path: str, needed: str, caller: str
) -> None:
    name = f"{method} {path} by {caller}"
    arguments = _request(served, method, path, name)
    headers = {} if caller == "nobody" else {"Authorization": f"Bearer {served.secrets[caller]}"}
    before = _state(served, name)
    answer = requests.request(method, served.url + path, headers=headers, timeout=10, **arguments)
    role = ADMIN if caller == "bootstrap" else caller
    if role not in _RANK:  # no token, a wrong one, a revoked one
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"].startswith("Bearer")
        if method != "HEAD":  # which has no body to say why
            assert answer.json()["error"]["type"] == "AuthenticationError"
    elif _RANK[role] < _RANK[needed]:
        assert answer.status_code == 403, answer.text
        error = answer.json()["error"]
        assert error["type"] == "AuthenticationError"
        assert f"a {role} token may not" in error["message"]
        assert re.search(f"needs an? {needed} token", error["message"]), error["message"]
    else:
        assert answer.status_code < 300, answer.text
        return
    assert _state(served, name) == before  # refused: nothing changed


def test_health_is_open_to_all(served: Served) -> None:
    assert requests.get(f"{served.url}{API}/health", timeout=10).json()["schedy"]


def test_the_client_says_what_the_role_lacks(served: Served) -> None:
    with schedy.SchedyDB(served.url, token=served.secrets[READ]) as db:
        assert isinstance(db.get_experiments(), list)
        with pytest.raises(AuthenticationError, match=r"a read token .*needs an admin token"):
            db.add_experiment(schedy.ManualSearch("by a reader"))
    with schedy.SchedyDB(served.url, token=served.secrets[WORKER]) as db:
        experiment = db.get_experiments()[0]
        with pytest.raises(AuthenticationError, match="needs an admin token"):
            experiment.delete()


def test_a_worker_token_is_all_a_worker_needs(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    secret = "a-worker-secret-0123456789"
    storage.create_token("gpu-1", WORKER, _wire.hash_secret(secret))
    try:
        with serving(create_app(storage, BOOTSTRAP)) as url:
            with schedy.SchedyDB(url, token=BOOTSTRAP) as admin:
                admin.add_experiment(
                    schedy.PopulationBasedTraining(
                        "pbt",
                        schedy.pbt.MAXIMIZE,
                        "acc",
                        exploit=schedy.pbt.Truncate(),
                        explore={"lr": schedy.pbt.Perturb()},
                        initial_distributions={"lr": schedy.random.LogUniform(1e-4, 1e-1)},
                        population_size=2,
                        max_generations=2,
                        seed=0,
                    )
                )
            with schedy.SchedyDB(url, token=secret) as db:
                experiment = db.get_experiment("pbt")
                done = 0
                while True:  # the worker loop, to the end of the experiment
                    try:
                        job = experiment.next_job(timeout=10)
                    except schedy.errors.NoJobError:
                        break
                    with job:
                        job.results["acc"] = job.hyperparameters["lr"]
                    done += 1
                assert done >= 2
                assert db.get_experiment("pbt").status == "DONE"
                experiment.add_job({"lr": 0.01})  # queueing by hand is a worker's too
    finally:
        storage.close()


# -- revocation -------------------------------------------------------------------
def test_a_revoked_token_is_refused_at_once_without_a_cache(
    tmp_path: Path, schedy_cli: Any
) -> None:
    database = f"sqlite:///{tmp_path}/s.db"
    secret = schedy_cli("--db", database, "token", "create", "--name", "w").out.strip()
    storage = SQLStorage(database)
    try:
        with serving(create_app(storage, token_cache_seconds=0)) as url:
            headers = {"Authorization": f"Bearer {secret}"}
            assert requests.get(f"{url}{API}/experiments", headers=headers, timeout=10).ok
            assert schedy_cli("--db", database, "token", "revoke", "w").code == 0
            refused = requests.get(f"{url}{API}/experiments", headers=headers, timeout=10)
            assert refused.status_code == 401
    finally:
        storage.close()


def test_a_token_is_cached_a_few_seconds_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(_auth, "_clock", lambda: now[0])
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    lookups: list[str] = []
    find = storage.find_token
    monkeypatch.setattr(storage, "find_token", lambda h: lookups.append(h) or find(h))
    secret = "a-worker-secret-0123456789"
    storage.create_token("w", WORKER, _wire.hash_secret(secret))
    try:
        app = create_app(storage)
        assert _auth.DEFAULT_CACHE_SECONDS <= 5
        with serving(app) as url:
            headers = {"Authorization": f"Bearer {secret}"}

            def status() -> int:
                return requests.get(f"{url}{API}/session", headers=headers, timeout=10).status_code

            assert [status(), status(), status()] == [200, 200, 200]
            assert len(lookups) == 1  # cached
            storage.revoke_token("w")
            assert status() == 200  # still cached...
            now[0] += _auth.DEFAULT_CACHE_SECONDS + 0.01
            assert status() == 401  # ...for a few seconds at most
            assert len(lookups) == 2
    finally:
        storage.close()


# -- the bootstrap token --------------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("t", "at least 16 characters"),
        ("x" * 15, "at least 16 characters"),
        ("   ", "at least 16 characters"),
        ("sixteen chars with spaces", "spaces"),
        ("token-ümlaut-0123456789", "ASCII"),
    ],
)
def test_a_weak_bootstrap_token_is_refused(tmp_path: Path, token: str, message: str) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    try:
        with pytest.raises(ValueError, match=message) as refused:
            create_app(storage, token)
        if len(token.strip()) > 4:  # the secret is never repeated
            assert token.strip() not in str(refused.value)
    finally:
        storage.close()


def test_surrounding_whitespace_is_no_part_of_a_token(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    try:
        with serving(create_app(storage, f"  {BOOTSTRAP}\n")) as url:
            for sent in (BOOTSTRAP, f"{BOOTSTRAP} "):
                answer = requests.get(
                    f"{url}{API}/session", headers={"Authorization": f"Bearer {sent}"}, timeout=10
                )
                assert answer.status_code == 200
    finally:
        storage.close()


def test_an_empty_bearer_or_an_absurd_one_is_refused(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    try:
        with serving(create_app(storage, BOOTSTRAP)) as url:
            for header in ("Bearer", "Bearer ", "Basic " + BOOTSTRAP, "Bearer " + "x" * 5000):
                answer = requests.get(
                    f"{url}{API}/session", headers={"Authorization": header}, timeout=10
                )
                assert answer.status_code == 401, header
    finally:
        storage.close()


def _served_app(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Keep ``schedy server`` from serving: record the app it would serve instead."""
    apps: list[Any] = []
    original = uvicorn.Server.run

    def run(self: uvicorn.Server, sockets: Any = None) -> None:
        if sockets is None:  # a test's own server (serving()): serve it
            original(self)
        else:  # serve()'s: record its app instead
            apps.append(self.config.app)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return apps


def _accepts(app: Any, token: str) -> bool:
    with serving(app) as url:
        answer = requests.get(
            f"{url}{API}/session", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
    return answer.status_code == 200


def test_the_server_command_reads_a_token_file_and_strips_it(
    tmp_path: Path, schedy_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = _served_app(monkeypatch)
    (tmp_path / "token").write_text(f"{BOOTSTRAP}\n")
    db = f"sqlite:///{tmp_path}/s.db"
    done = schedy_cli("--db", db, "server", "--port", "0", "--token-file", str(tmp_path / "token"))
    assert done.code == 0, done.err
    assert "token required" in done.err and "visible" not in done.err
    assert _accepts(apps[-1], BOOTSTRAP)


def test_the_server_command_strips_the_environment_token(
    tmp_path: Path, schedy_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = _served_app(monkeypatch)
    monkeypatch.setenv("SCHEDY_TOKEN", f" {BOOTSTRAP}\r\n")
    done = schedy_cli("--db", f"sqlite:///{tmp_path}/s.db", "server", "--port", "0")
    assert done.code == 0, done.err
    assert _accepts(apps[-1], BOOTSTRAP)


def test_token_on_the_command_line_works_with_a_warning(
    tmp_path: Path, schedy_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = _served_app(monkeypatch)
    done = schedy_cli(
        "--db", f"sqlite:///{tmp_path}/s.db", "server", "--port", "0", "--token", BOOTSTRAP
    )
    assert done.code == 0, done.err
    assert re.search(r"warning: --token is visible to .*\$SCHEDY_TOKEN or --token-file", done.err)
    assert _accepts(apps[-1], BOOTSTRAP)


@pytest.mark.parametrize(
    ("options", "environment", "message"),
    [
        (["--token", "short"], None, "at least 16 characters"),
        ([], "short", "at least 16 characters"),
        (["--token-file", "missing"], None, "cannot read the token file"),
        (["--token-file", "empty"], None, "token file empty is empty"),
        (["--max-body-mb", "inf"], None, "--max-body-mb must be"),
        (["--token", BOOTSTRAP, "--token-file", "empty"], None, "not both"),
        (["--max-body-mb", "0"], None, "--max-body-mb must be"),
        (["--max-body-mb", "-1"], None, "--max-body-mb must be"),
    ],
)
def test_the_server_command_refuses_bad_tokens(
    tmp_path: Path,
    schedy_cli: Any,
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    environment: str | None,
    message: str,
) -> None:
    _served_app(monkeypatch)
    (tmp_path / "empty").write_text("\n")
    monkeypatch.chdir(tmp_path)
    if environment is not None:
        monkeypatch.setenv("SCHEDY_TOKEN", environment)
    done = schedy_cli("--db", f"sqlite:///{tmp_path}/s.db", "server", "--port", "0", *options)
    assert done.code == 2, done
    assert message in done.err and "Traceback" not in done.err
    assert "short" not in done.err.replace("--token short", "")  # the secret is not echoed


def test_the_server_command_caps_bodies(
    tmp_path: Path, schedy_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = _served_app(monkeypatch)
    done = schedy_cli(
        "--db", f"sqlite:///{tmp_path}/s.db", "server", "--port", "0", "--max-body-mb", "0.001"
    )
    assert done.code == 0, done.err
    with serving(apps[-1]) as url:
        answer = requests.post(
            f"{url}{API}/jobs", params={"experiment": "m"}, data=b"x" * 2000, timeout=10
        )
    assert answer.status_code == 413


def test_tokens_in_the_store_secure_a_server_without_a_bootstrap_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path}/s.db")
    _served_app(monkeypatch)
    try:
        lines: list[str] = []
        with pytest.raises(ValueError, match="without a token"):
            serve(storage, host="0.0.0.0", port=0, announce=lines.append)
        secret = "a-worker-secret-0123456789"
        storage.create_token("w", WORKER, _wire.hash_secret(secret))
        serve(storage, host="0.0.0.0", port=0, announce=lines.append)
        assert "token required" in lines[-1]
        app = create_app(storage)
        with serving(app) as url:
            assert requests.get(f"{url}{API}/experiments", timeout=10).status_code == 401
            headers = {"Authorization": f"Bearer {secret}"}
            assert requests.get(f"{url}{API}/experiments", headers=headers, timeout=10).ok
    finally:
        storage.close()


def test_the_secret_hash_is_sha256_hex() -> None:
    assert _wire.hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(_wire.new_secret()) == 43
