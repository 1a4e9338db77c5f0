"""Checkpoints without shared storage: the server's artifact store and the client's use of it.

Workers that share no file system hand checkpoints to each other through
``schedy server --artifacts``: checked here are the store's contract (hash
and size checked, nothing half stored, a size limit, no path traversal,
roles, ``Range`` resumption, retention by the callbacks' rule), the
client's cache, and a PBT run over PostgreSQL by worker processes that
share no folder, one of them killed mid-upload.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server needs: pip install 'schedy[server]'")

import requests
import uvicorn

import schedy
from schedy import _artifacts, _wire
from schedy.errors import AuthenticationError, NotFoundError, StorageError
from schedy.integrations import _core, _files
from schedy.server import create_app
from schedy.storage._http import HTTPStorage
from schedy.storage._sql import SQLStorage

TOKEN = "artifact-test-token-0123456789"
API = _wire.API_PREFIX
ROOT = Path(__file__).resolve().parent.parent


class Served:
    """A server with an artifact folder, in a thread."""

    def __init__(self, storage: SQLStorage, artifacts: Path, **options: Any) -> None:
        self.storage = storage
        self.artifacts = artifacts
        app = create_app(storage, TOKEN, artifacts=str(artifacts), **options)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # uvicorn offers a flag, not an event
            assert self.thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.005)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def files(self) -> list[Path]:
        """Every file in the artifact folder (uploads in progress included)."""
        return sorted(path for path in self.artifacts.rglob("*") if path.is_file())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    storage = SQLStorage(f"sqlite:///{tmp_path}/served.db")
    server = Served(storage, tmp_path / "artifacts", max_artifact_bytes=2**20)
    yield server
    server.stop()
    storage.close()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_files.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("SCHEDY_CHECKPOINT_DIR", raising=False)


def _job(served: Served, name: str = "exp/1") -> tuple[schedy.SchedyDB, Any]:
    db = schedy.SchedyDB(served.url, token=TOKEN)
    db.add_experiment(schedy.ManualSearch(name))
    return db, db.get_experiment(name).add_job(hyperparameters={"x": 1})


def _file(tmp_path: Path, size: int, seed: int = 0) -> tuple[Path, str]:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    path = tmp_path / f"data-{seed}-{size}.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _params(job: Any, filename: str = "model.pt", **more: Any) -> dict[str, Any]:
    return {"experiment": job.experiment.name, "job": job.id, "file": filename, **more}


AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- the store's contract --------------------------------------------------------
def test_upload_and_download_round_trip_with_the_hash_checked(
    served: Served, tmp_path: Path
) -> None:
    db, job = _job(served)
    client = db._storage
    assert isinstance(client, HTTPStorage) and client.keeps_artifacts()
    path, sha = _file(tmp_path, 300_000)
    stored = client.upload_artifact("exp/1", job.id, "model.pt", str(path), sha)
    assert stored == _artifacts.ArtifactInfo(job.id, "model.pt", 300_000, sha)
    assert client.artifact_info("exp/1", job.id, "model.pt") == stored
    assert client.artifact_info("exp/1", job.id, "other.pt") is None
    assert client.list_artifacts("exp/1") == [stored]
    target = tmp_path / "back.bin"
    client.download_artifact("exp/1", job.id, "model.pt", str(target), stored)
    assert target.read_bytes() == path.read_bytes()
    # What the client checks it against is what it was told: a wrong hash is refused.
    wrong = stored._replace(sha256="0" * 64)
    with pytest.raises(StorageError, match=r"changed on the server|corrupt"):
        client.download_artifact("exp/1", job.id, "model.pt", str(target), wrong)


@pytest.mark.parametrize("fault", ["hash", "short", "long"])
def test_a_corrupted_or_short_upload_is_refused_and_leaves_nothing(
    served: Served, tmp_path: Path, fault: str
) -> None:
    _, job = _job(served)
    path, sha = _file(tmp_path, 5000)
    data = path.read_bytes()
    declared = {"sha256": sha, "size": len(data)}
    if fault == "hash":
        data = b"X" + data[1:]
    elif fault == "short":
        declared["size"] = len(data) + 10
    else:
        declared["size"] = len(data) - 10
    answer = requests.put(
        f"{served.url}{API}/artifact",
        params=_params(job, **declared),
        data=data,
        headers=AUTH,
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    assert "nothing was stored" in answer.json()["error"]["message"]
    assert served.files() == []


def test_the_size_limit_is_a_clear_413_whether_announced_or_streamed(
    served: Served, tmp_path: Path
) -> None:
    db, job = _job(served)
    path, sha = _file(tmp_path, 2**20 + 1)
    with pytest.raises(ValueError, match=r"limit of 1 MiB \(`schedy server --max-artifact-size`"):
        db._storage.upload_artifact("exp/1", job.id, "big.pt", str(path), sha)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the route counts as it reads
        data = path.read_bytes()
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    answer = requests.put(
        f"{served.url}{API}/artifact",
        params=_params(job, "big.pt", sha256=sha, size=2**20),  # lying about its size
        data=chunks(),
        headers=AUTH,
        timeout=10,
    )
    assert answer.status_code in (400, 413), answer.text
    assert served.files() == []
    # Other bodies keep the 16 MiB cap: the artifact limit is the artifact route's alone.
    big = requests.post(
        f"{served.url}{API}/jobs",
        params={"experiment": "exp/1"},
        data=b"[" * (17 * 2**20),
        headers={**AUTH, "Content-Type": _wire.MEDIA_TYPE},
        timeout=30,
    )
    assert big.status_code == 413 and "--max-body-mb" in big.text


@pytest.mark.parametrize(
    ("job_id", "filename"),
    [
        (None, "../escape.pt"),
        (None, ".."),
        (None, ".hidden"),
        (None, "a/b.pt"),
        (None, "a\\b.pt"),
        (None, ""),
        ("../..", "model.pt"),
        ("..", "model.pt"),
    ],
)
def test_names_that_could_leave_the_folder_are_refused(
    served: Served, tmp_path: Path, job_id: str | None, filename: str
) -> None:
    _, job = _job(served)
    params = _params(job, filename, sha256="0" * 64, size=1)
    if job_id is not None:
        params["job"] = job_id
    answer = requests.put(
        f"{served.url}{API}/artifact", params=params, data=b"x", headers=AUTH, timeout=10
    )
    assert answer.status_code in (400, 404), answer.text
    assert served.files() == []
    assert not any(p.name.startswith(("escape", "model")) for p in tmp_path.rglob("*"))
    fetched = requests.get(f"{served.url}{API}/artifact", params=params, headers=AUTH, timeout=10)
    assert fetched.status_code in (400, 404)


def test_an_artifact_names_a_job_of_the_experiment(served: Served, tmp_path: Path) -> None:
    db, job = _job(served)
    path, sha = _file(tmp_path, 10)
    with pytest.raises(NotFoundError):
        db._storage.upload_artifact("exp/1", "NoSuchJob0", "model.pt", str(path), sha)
    with pytest.raises(NotFoundError):
        db._storage.upload_artifact("no such experiment", job.id, "model.pt", str(path), sha)
    assert served.files() == []


def test_roles_read_downloads_worker_uploads_admin_deletes(served: Served, tmp_path: Path) -> None:
    _, job = _job(served)
    secrets = {}
    for role in ("read", "worker", "admin"):
        secrets[role] = f"the-{role}-token-secret-0123456789"
        served.storage.create_token(role, role, _wire.hash_secret(secrets[role]))
    path, sha = _file(tmp_path, 100)
    clients = {role: HTTPStorage(served.url, token=secrets[role]) for role in secrets}
    with pytest.raises(AuthenticationError, match="a read token may not upload artifacts"):
        clients["read"].upload_artifact("exp/1", job.id, "m.pt", str(path), sha)
    stored = clients["worker"].upload_artifact("exp/1", job.id, "m.pt", str(path), sha)
    assert clients["read"].artifact_info("exp/1", job.id, "m.pt") == stored
    clients["read"].download_artifact("exp/1", job.id, "m.pt", str(tmp_path / "r"), stored)
    with pytest.raises(AuthenticationError, match="a worker token may not delete artifacts"):
        clients["worker"].delete_artifact("exp/1", job.id, "m.pt")
    clients["admin"].delete_artifact("exp/1", job.id, "m.pt")
    assert clients["read"].artifact_info("exp/1", job.id, "m.pt") is None
    nobody = requests.get(f"{served.url}{API}/artifact", params=_params(job, "m.pt"), timeout=10)
    assert nobody.status_code == 401


def test_ranges_are_served_and_a_dropped_download_resumes(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, job = _job(served)
    path, sha = _file(tmp_path, 3 * 2**20 // 4)
    data = path.read_bytes()
    stored = db._storage.upload_artifact("exp/1", job.id, "model.pt", str(path), sha)
    url, params = f"{served.url}{API}/artifact", _params(job)

    def get(**headers: str) -> requests.Response:
        return requests.get(url, params=params, headers={**AUTH, **headers}, timeout=10)

    part = get(Range="bytes=1000-")
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert get(Range="bytes=10-19").content == data[10:20]
    assert get(Range="bytes=-5").content == data[-5:]
    assert get(Range=f"bytes={len(data)}-").status_code == 416
    changed = get(Range="bytes=1000-", **{"If-Range": '"' + "1" * 64 + '"'})
    assert changed.status_code == 200 and changed.content == data  # not the same file: all of it

    # The connection drops after the first MiB-chunk; the client asks for the rest.
    ranges: list[str | None] = []
    real = requests.Session.request

    def request(self: requests.Session, method: str, *args: Any, **kwargs: Any) -> Any:
        response = real(self, method, *args, **kwargs)
        if method == "GET" and kwargs.get("stream"):
            ranges.append((kwargs.get("headers") or {}).get("Range"))
            if len(ranges) == 1:
                chunks = response.iter_content

                def broken(size: int = 1, decode_unicode: bool = False) -> Iterator[bytes]:
                    source = chunks(64 * 1024)
                    yield next(source)
                    raise requests.exceptions.ChunkedEncodingError("connection broken")

                response.iter_content = broken  # type: ignore[method-assign]
        return response

    monkeypatch.setattr(requests.Session, "request", request)
    target = tmp_path / "resumed.bin"
    db._storage.download_artifact("exp/1", job.id, "model.pt", str(target), stored)
    assert target.read_bytes() == data
    assert ranges == [None, "bytes=65536-"]


def test_a_range_header_this_server_cannot_read_is_ignored(served: Served, tmp_path: Path) -> None:
    """Digits only ASCII ones: ``str.isdigit`` also takes ``²`` (a header is Latin-1),
    which int() refuses, so ``Range: bytes=²-`` got a 400, where a Range header
    this server does not read is ignored: the whole artifact, a 200. And a number
    of 5000 digits got a 400 too (int() refuses one past 4300)."""
    db, job = _job(served)
    path, sha = _file(tmp_path, 1000)
    db._storage.upload_artifact("exp/1", job.id, "model.pt", str(path), sha)
    for header in ("bytes=\u00b2-", "bytes=0-\u00b9", "bytes=-\u00b3", "bytes=\u00bd-"):
        answer = requests.get(
            f"{served.url}{API}/artifact",
            params=_params(job),
            headers={**AUTH, "Range": header},
            timeout=10,
        )
        assert answer.status_code == 200, (header, answer.text)
        assert answer.content == path.read_bytes()
    # A number longer than int() reads (4300 digits) is larger than any artifact.
    many = "9" * 5000
    for header, status in (
        (f"bytes={many}-", 416),
        (f"bytes=0-{many}", 206),
        (f"bytes=-{many}", 206),
    ):
        answer = requests.get(
            f"{served.url}{API}/artifact",
            params=_params(job),
            headers={**AUTH, "Range": header},
            timeout=10,
        )
        assert answer.status_code == status, (header[:20], answer.text)


# -- the OpenAPI document, as the routes behave --------------------------------------
def _operation(served: Served, method: str, path: str = "/artifact") -> dict[str, Any]:
    document = requests.get(f"{served.url}/openapi.json", headers=AUTH, timeout=10).json()
    operation: dict[str, Any] = document["paths"][API + path][method.lower()]
    return operation


@pytest.mark.parametrize(
    ("method", "name", "values"),
    [
        ("GET", "job", ["", "..", "a/b", "a.b", "x" * 128, "x" * 129, "-x", "NoSuchJob0"]),
        ("GET", "file", ["", ".hidden", "..", "a/b.pt", "a\\b.pt", "x" * 200, "x" * 201]),
        ("HEAD", "file", ["", ".hidden", "a/b.pt", "m.pt", "m.pt\n"]),
        ("DELETE", "job", ["", "..", "a b", "NoSuchJob0"]),
        ("PUT", "sha256", ["", "0" * 63, "A" * 64, "0" * 65, "sha"]),
    ],
)
def test_the_document_states_the_rule_of_each_name_and_hash(
    served: Served, method: str, name: str, values: list[str]
) -> None:
    """Found by fuzzing (tests/test_server_fuzz.py): the document let any string name
    a job, a file or a hash, and the server refused most with a 400. Now each
    carries its pattern, and a value breaks it exactly when the server refuses it."""
    operation = _operation(served, method)
    schemas = {parameter["name"]: parameter["schema"] for parameter in operation["parameters"]}
    pattern = schemas[name]["pattern"]
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    _, job = _job(served, f"rules of {method} {name}")
    for value in values:
        params = _params(job, "m.pt", sha256="0" * 64, size=1)
        params[name] = value
        answer = requests.request(
            method,
            f"{served.url}{API}/artifact",
            params=params,
            data=b"x",
            headers=AUTH,
            timeout=10,
        )
        fits = re.fullmatch(pattern[1:-1], value) is not None  # $ as JSON Schema means it
        assert (answer.status_code != 400) == fits, (value, answer.status_code, answer.text)


def test_the_document_describes_the_bytes_that_travel(served: Served) -> None:
    """Found by fuzzing: the upload had no request body in the document (so nothing
    to generate), the download and HEAD said they answer JSON, and neither the
    Range headers nor the 206 and 416 they lead to were there."""
    binary = {"type": "string", "format": "binary"}
    upload = _operation(served, "PUT")
    assert upload["requestBody"]["content"] == {"application/octet-stream": {"schema": binary}}
    size = {p["name"]: p["schema"] for p in upload["parameters"]}["size"]
    assert (size["minimum"], size["maximum"]) == (0, 2**20)  # the served limit
    assert upload["responses"]["201"]["content"][_wire.MEDIA_TYPE]["schema"] == {
        "$ref": "#/components/schemas/StoredArtifact"
    }
    download = _operation(served, "GET")
    headers = {p["name"].lower() for p in download["parameters"] if p["in"] == "header"}
    assert headers == {"range", "if-range"}
    for status in ("200", "206"):
        answer = download["responses"][status]
        assert answer["content"] == {"application/octet-stream": {"schema": binary}}
        assert "etag" in {header.lower() for header in answer["headers"]}
    assert "content-range" in {h.lower() for h in download["responses"]["206"]["headers"]}
    assert "content" not in download["responses"]["416"]
    head = _operation(served, "HEAD")
    assert "content" not in head["responses"]["200"]
    assert {"etag", "content-length"} <= {h.lower() for h in head["responses"]["200"]["headers"]}
    for operation in (download, head):  # failures are still the error JSON
        assert _wire.MEDIA_TYPE in operation["responses"]["404"]["content"]


def test_the_cache_spares_a_second_download(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from schedy.integrations.torch import restore, save

    db, job = _job(served)
    job = db.get_experiment("exp/1").next_job()
    model = torch.nn.Linear(4, 4)
    written = save(job, model)
    assert written == f"schedy://exp%2F1/{job.id}/{job.id}.pt"
    assert job.results["model_path"] == written
    downloads: list[str] = []
    real = HTTPStorage.download_artifact

    def counted(self: HTTPStorage, *args: Any) -> None:
        downloads.append(args[1])
        real(self, *args)

    monkeypatch.setattr(HTTPStorage, "download_artifact", counted)
    again = torch.nn.Linear(4, 4)
    restore(job, again)  # the member goes on here: its own checkpoint is in the cache
    assert downloads == []
    assert torch.equal(again.weight, model.weight)
    for cached in (tmp_path / "cache" / "artifacts").iterdir():
        cached.unlink()  # another machine: the cache is empty
    restore(job, torch.nn.Linear(4, 4))
    assert downloads == [job.id]
    restore(job, torch.nn.Linear(4, 4))
    assert downloads == [job.id]  # downloaded once


def test_the_cache_stays_within_its_bound(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = _job(served)
    experiment = db.get_experiment("exp/1")
    monkeypatch.setenv(_files.CACHE_MB_ENV, str(25_000 / 2**20))  # 25 kB
    for seed in range(5):
        job = experiment.add_job(hyperparameters={"x": seed})
        job = experiment.get_job(job.id)  # handed out by the server: its id is known
        url = _artifacts.artifact_url("exp/1", job.id, "m.bin")
        data = bytes([seed]) * 10_000
        _files.atomic_write(url, lambda local, data=data: Path(local).write_bytes(data))
    cached = list((tmp_path / "cache" / "artifacts").iterdir())
    assert 1 <= len(cached) <= 2 and sum(p.stat().st_size for p in cached) <= 25_000


def test_a_checkpoint_folder_still_wins_over_the_server(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from schedy.integrations.torch import save

    db, _ = _job(served)
    job = db.get_experiment("exp/1").next_job()
    assert save(job, torch.nn.Linear(2, 2), checkpoint_dir=tmp_path / "shared").startswith(
        str(tmp_path / "shared")
    )
    monkeypatch.setenv("SCHEDY_CHECKPOINT_DIR", str(tmp_path / "env"))
    assert save(job, torch.nn.Linear(2, 2)).startswith(str(tmp_path / "env"))
    assert served.files() == []


def test_a_server_without_artifacts_leaves_checkpoints_in_folders(
    tmp_path: Path,
    start_server: Callable[..., Any],
    server_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with start_server(f"sqlite:///{tmp_path}/plain.db") as url:
        db = schedy.SchedyDB(url, token=server_token)
        db.add_experiment(schedy.ManualSearch("plain"))
        job = db.get_experiment("plain").add_job(hyperparameters={})
        job = db.get_experiment("plain").get_job(job.id)
        assert not db._storage.keeps_artifacts()
        monkeypatch.chdir(tmp_path)
        assert _files.artifact_location(job.id, ".pt") is None
        db.close()


def test_the_lightning_callback_saves_and_restores_through_the_server(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning writes and reads checkpoints through fsspec itself: schedy:// is one.
    pytest.importorskip("fsspec")
    pl = pytest.importorskip("lightning.pytorch")
    torch = pytest.importorskip("torch")
    from schedy.integrations.lightning import SchedyCallback

    class Net(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, index: int) -> Any:
            inputs, targets = batch
            loss = torch.nn.functional.mse_loss(self.layer(inputs), targets)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monkeypatch.chdir(tmp_path)
    inputs = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True))
    db, _ = _job(served, "lightning")
    experiment = db.get_experiment("lightning")
    experiment.add_job(hyperparameters={"x": 2})
    paths: list[str] = []
    for _ in range(2):
        with experiment.next_job() as job:
            if paths:
                job.results["model_path"] = paths[-1]  # continue the first job's checkpoint
            trainer = pl.Trainer(
                max_epochs=5,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[SchedyCallback(job, "loss", epochs_per_job=1)],
            )
            trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=4))
            paths.append(job.results["model_path"])
        assert job.results["epoch"] == len(paths)  # the second went on from epoch 1
    assert all(path.startswith("schedy://lightning/") for path in paths)
    assert not (tmp_path / "checkpoints").exists()  # nothing in a local folder


# -- retention -------------------------------------------------------------------
def test_retention_keeps_heads_running_and_top_k_and_deletes_the_rest(
    served: Served, tmp_path: Path
) -> None:
    db = schedy.SchedyDB(served.url, token=TOKEN)
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "pbt",
            schedy.pbt.MAXIMIZE,
            "score",
            exploit=schedy.pbt.Truncate(0.5),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions={"lr": schedy.random.Uniform(0.0, 1.0)},
            population_size=3,
            max_generations=4,
            seed=3,
        )
    )
    experiment = db.get_experiment("pbt")
    client = db._storage
    for step in range(8):
        with experiment.next_job() as job:
            url = _core.checkpoint_path(None, job.id, ".bin")
            payload = f"{job.id}".encode()
            _files.atomic_write(url, lambda local, p=payload: Path(local).write_bytes(p))
            job.results["model_path"] = url
            job.results["score"] = float(job.hyperparameters["lr"]) + step / 100
    running = experiment.next_job()  # holds its parent's checkpoint until it saves its own
    url = _core.checkpoint_path(None, running.id, ".bin")
    _files.atomic_write(url, lambda local: Path(local).write_bytes(b"in progress"))
    in_use = client.jobs_in_use("pbt", 1)
    needed = {str(job.results["model_path"]) for job in in_use if job.results.get("model_path")}
    needed.add(url)  # a running job's own checkpoint, not yet in its results
    kept = {
        _artifacts.artifact_url("pbt", a.job_id, a.filename) for a in client.list_artifacts("pbt")
    }
    assert kept == needed
    heads = {m.head_id for m in experiment.population()}
    assert {j for j in heads if j} <= {_artifacts.parse_artifact_url(u).job_id for u in kept}
    best = experiment.best()
    assert best is not None and best.results["model_path"] in kept
    assert len(kept) <= 3 + 1 + 2  # heads, the best, the running job and its parent
    db.get_experiment("pbt").delete()
    assert served.files() == []  # deleting an experiment deletes its artifacts


# -- end to end --------------------------------------------------------------------
WORKER = textwrap.dedent(
    """
    import os, pathlib, sys, time
    import torch
    import schedy
    from schedy.errors import NoJobError
    from schedy.integrations.torch import restore, report, save

    url, token, worker, marker, lease = sys.argv[1:6]
    if marker != "-":  # send half the checkpoint, then hang there: to be killed mid-upload
        import schedy.storage._http as http

        class Half:
            def __init__(self, path):
                self.file, self.size = open(path, "rb"), os.path.getsize(path)
            def __len__(self):
                return self.size - self.file.tell()
            def tell(self):
                return self.file.tell()
            def seek(self, *args):
                return self.file.seek(*args)
            def read(self, n=-1):
                if self.file.tell() >= self.size // 2:
                    pathlib.Path(marker).touch()
                    time.sleep(3600)
                return self.file.read(min(n if n > 0 else self.size, self.size // 2))
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.file.close()

        http._open_upload = Half
    torch.manual_seed(0)
    db = schedy.SchedyDB(url, token=token)
    experiment = db.get_experiment("e2e")
    while True:
        try:
            job = experiment.next_job(timeout=20, lease=float(lease))
        except NoJobError:
            break
        with job:
            model = torch.nn.Linear(64, 64)
            start = restore(job, model).get("epoch", 0)
            lr = job.hyperparameters["lr"]
            with torch.no_grad():
                model.bias.add_(lr)
            report(job, {"score": float(model.bias.detach().mean())}, epoch=start + 1, push=False)
            job.results["worker"] = worker
            save(job, model, epoch=start + 1)
    """
)


@pytest.mark.slow
def test_workers_without_a_shared_folder_run_pbt_through_the_server(
    postgres_url: str, tmp_path: Path
) -> None:
    storage = SQLStorage(postgres_url)
    served = Served(storage, tmp_path / "artifacts")
    try:
        db = schedy.SchedyDB(served.url, token=TOKEN)
        db.add_experiment(
            schedy.PopulationBasedTraining(
                "e2e",
                schedy.pbt.MAXIMIZE,
                "score",
                exploit=schedy.pbt.Truncate(0.5),
                explore={"lr": schedy.pbt.Perturb()},
                initial_distributions={"lr": schedy.random.Uniform(0.0, 1.0)},
                population_size=4,
                max_generations=5,
                seed=7,
            )
        )
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        marker = tmp_path / "half-sent"

        def start(name: str, halt: bool = False) -> subprocess.Popen[bytes]:
            home = tmp_path / name  # its own folder, cache and checkpoints: nothing shared
            home.mkdir()
            environment = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "SCHEDY_CACHE": str(home / "cache"),
                "SCHEDY_RETRY_SECONDS": "20",
            }
            environment.pop("SCHEDY_CHECKPOINT_DIR", None)
            # The victim's lease is short, so its member is soon re-run; the
            # others' outlast a loaded machine's late heartbeats (3 s lost one).
            lease = "3" if halt else "20"
            arguments = [served.url, TOKEN, name, str(marker) if halt else "-", lease]
            return subprocess.Popen(
                [sys.executable, str(script), *arguments], cwd=home, env=environment
            )

        victim = start("victim", halt=True)
        workers = [start("a"), start("b")]  # importing torch meanwhile
        deadline = time.monotonic() + 60
        while not marker.exists():  # half its checkpoint is on the way
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        for worker in workers:
            assert worker.wait(timeout=120) == 0
        jobs = list(db.get_experiment("e2e").all_jobs())
        by_id = {job.id: job for job in jobs}
        crashed = [job for job in jobs if job.status == schedy.Job.CRASHED]
        # The victim's job: lease expired, its member re-run. (Whether its results
        # name it depends on whether they reached the store before the kill.)
        victims = [job for job in crashed if job.results.get("worker") in (None, "victim")]
        assert len(victims) == 1, "\n".join(  # a str: pytest shows it whole
            str((j.status, j.member, j.generation, j.results.get("worker"), j.error)) for j in jobs
        )
        done = [job for job in jobs if job.status == schedy.Job.DONE]
        assert {job.results["worker"] for job in done} == {"a", "b"}
        assert all(job.results["model_path"].startswith("schedy://e2e/") for job in done)
        crossing = [
            job
            for job in done
            if job.parent_id in by_id
            and by_id[job.parent_id].results.get("worker") not in (None, job.results["worker"])
        ]
        assert crossing, "no job continued a checkpoint another worker wrote"
        assert db.get_experiment("e2e").status == schedy.Experiment.DONE
        # Bounded and consistent: what a job can need (the heads, the best) and
        # nothing else -- the victim's half upload and the superseded ones gone.
        stored = {
            _artifacts.artifact_url("e2e", a.job_id, a.filename)
            for a in db._storage.list_artifacts("e2e")
        }
        needed = {
            str(job.results["model_path"])
            for job in db._storage.jobs_in_use("e2e", 1)
            if job.results.get("model_path")
        }
        assert needed <= stored and len(stored) <= 4 + 1 + 2
        assert not any((tmp_path / "artifacts" / ".uploads").iterdir())
        db.close()
    finally:
        served.stop()
        storage.close()
