"""Artifacts: the checkpoints of workers that share no file system, kept by the server.

``schedy server --artifacts DIR|URL`` keeps them in a folder or at an fsspec
URL of its own; workers upload a job's checkpoint after saving it and
download a parent's to restore it (``integrations._files``), naming it
``schedy://<experiment>/<job>/<file>`` in the job's results. Routes (names
as query parameters, like every route, since an experiment's name may hold
any character):

- ``PUT /api/v1/artifact?experiment=&job=&file=&sha256=&size=`` (worker):
  the body is streamed to a temporary file while it is hashed -- never whole
  in memory (``_guard`` lets it through unread, up to the artifact limit) --
  then checked against the declared size and SHA-256 and moved into place
  in one rename; a short, corrupted or oversized upload (413) leaves nothing
  behind. Then the experiment's artifacts are pruned (below);
- ``GET`` (read) streams it, honouring ``Range`` (and ``If-Range``) so a
  dropped download resumes where it stopped; ``HEAD`` gives its size and
  hash (the ``ETag``) alone; ``DELETE`` (admin);
- ``GET /api/v1/artifacts?experiment=`` (read) lists them;
  ``GET /api/v1/artifact-store`` says whether this server keeps artifacts.

Layout: ``<root>/<experiment key>/<job>/<file>/<sha256>``. The experiment's
key is a hash of its name (any name is a safe folder name); the content is
named by its hash, so what a reader finds is always a file whose hash it
knows, even while a job replaces its checkpoint. Deleting an experiment
deletes its folder.

Retention is the rule the callbacks apply to a checkpoint folder
(``schedy._retention``, the jobs ``Storage.jobs_in_use`` returns): after
each upload every artifact no member head, queued or running job, or one
of the ``keep_top_k`` best jobs references is deleted, so the folder stays
as bounded as a pruned checkpoint folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Annotated, Any, Protocol

import anyio.to_thread
from fastapi import Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from .. import _artifacts, _retention, _wire
from .._artifacts import (
    ARTIFACT_PATH,
    FILENAME_PATTERN,
    JOB_ID_PATTERN,
    SHA256_PATTERN,
    ArtifactInfo,
    check_filename,
    check_job_id,
    etag,
)
from .._records import TokenRole
from ..errors import NotFoundError
from ..storage._base import Storage
from ._guard import describe_size

__all__ = [
    "ARTIFACT_PATH",
    "DEFAULT_KEEP_TOP_K",
    "DEFAULT_MAX_ARTIFACT_BYTES",
    "ArtifactRoutes",
    "ArtifactStore",
    "install",
    "open_store",
    "parse_size",
]

logger = logging.getLogger("schedy.server")

#: The largest artifact by default: a large model's checkpoint, with its optimizer state.
DEFAULT_MAX_ARTIFACT_BYTES = 10 * 2**30
#: Best jobs whose artifacts are kept besides those a job may continue from (the callbacks').
DEFAULT_KEEP_TOP_K = 1
#: Bytes read or written at a time.
_CHUNK = 2**20
#: An unfinished upload older than this belongs to no living request (a killed server's).
_STALE_UPLOAD_S = 24 * 3600.0
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``10G``, ``512MiB``, ``1.5g`` or ``1000`` (bytes) as a number of bytes (binary units)."""
    found = _SIZE.fullmatch(text)
    size = int(float(found[1]) * _UNITS[found[2].lower()]) if found else 0
    if size < 1:
        raise ValueError(f"{text!r} is not a size: give bytes, or a number with K, M, G or T")
    return size


def _experiment_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# -- where artifacts are kept --------------------------------------------------
class ArtifactStore(Protocol):
    """A folder or an fsspec URL holding ``<experiment key>/<job>/<file>/<sha256>``."""

    location: str

    def staging(self) -> str:
        """A local folder for uploads in progress."""
        ...

    def find(self, experiment: str, job_id: str, filename: str) -> ArtifactInfo | None: ...

    def list(self, experiment: str) -> list[ArtifactInfo]: ...

    def open(self, experiment: str, info: ArtifactInfo) -> IO[bytes]: ...

    def commit(self, local: str, experiment: str, job_id: str, filename: str, sha: str) -> None:
        """Move the upload ``local`` into place (one rename, or one object put)."""
        ...

    def delete(self, experiment: str, job_id: str, filename: str) -> bool: ...

    def delete_experiment(self, experiment: str) -> None: ...


class _Folder:
    """Artifacts in a local folder; uploads are staged in it, so moving one in is a rename."""

    def __init__(self, root: str) -> None:
        self.location = os.path.abspath(os.path.expanduser(root))
        self._uploads = os.path.join(self.location, ".uploads")
        try:
            os.makedirs(self._uploads, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"cannot keep artifacts in {self.location}: {error.strerror or error}"
            ) from None
        self._sweep()

    def _sweep(self) -> None:
        """Remove uploads a killed server left behind (not another replica's, still running)."""
        cutoff = time.time() - _STALE_UPLOAD_S
        for entry in os.scandir(self._uploads):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    os.remove(entry.path)

    def staging(self) -> str:
        return self._uploads

    def _folder(self, experiment: str, job_id: str, filename: str) -> str:
        return os.path.join(self.location, _experiment_key(experiment), job_id, filename)

    def find(self, experiment: str, job_id: str, filename: str) -> ArtifactInfo | None:
        return _newest(job_id, filename, self._versions(self._folder(experiment, job_id, filename)))

    def _versions(self, folder: str) -> list[tuple[str, int, float]]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                found.append((entry.name, stat.st_size, stat.st_mtime))
        return found

    def list(self, experiment: str) -> list[ArtifactInfo]:
        root = os.path.join(self.location, _experiment_key(experiment))
        found = []
        for job_id in _listdir(root):
            for filename in _listdir(os.path.join(root, job_id)):
                info = self.find(experiment, job_id, filename)
                if info is not None:
                    found.append(info)
        return found

    def open(self, experiment: str, info: ArtifactInfo) -> IO[bytes]:
        folder = self._folder(experiment, info.job_id, info.filename)
        return open(os.path.join(folder, info.sha256), "rb")

    def commit(self, local: str, experiment: str, job_id: str, filename: str, sha: str) -> None:
        folder = self._folder(experiment, job_id, filename)
        os.makedirs(folder, exist_ok=True)
        os.replace(local, os.path.join(folder, sha))
        for name, _, _ in self._versions(folder):  # the versions it replaces
            if name != sha:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))

    def delete(self, experiment: str, job_id: str, filename: str) -> bool:
        folder = self._folder(experiment, job_id, filename)
        if not os.path.isdir(folder):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the job's folder, once empty
            os.rmdir(os.path.dirname(folder))
        return True

    def delete_experiment(self, experiment: str) -> None:
        shutil.rmtree(os.path.join(self.location, _experiment_key(experiment)), ignore_errors=True)


class _Remote:
    """Artifacts at an fsspec URL (``s3://bucket/schedy``): uploads staged locally, then put."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError:
            raise ValueError(
                f"artifacts at a URL ({url}) need fsspec and its driver (e.g. s3fs): "
                "pip install fsspec"
            ) from None
        self.location = url.rstrip("/")
        try:
            self._fs, self._root = fsspec.core.url_to_fs(self.location)
            self._fs.makedirs(self._root, exist_ok=True)
        except (ImportError, ValueError, OSError) as error:
            raise ValueError(f"cannot keep artifacts at {url}: {error}") from None
        self._uploads = tempfile.mkdtemp(prefix="schedy-uploads-")

    def staging(self) -> str:
        return self._uploads

    def _folder(self, experiment: str, job_id: str, filename: str) -> str:
        return f"{self._root}/{_experiment_key(experiment)}/{job_id}/{filename}"

    def _versions(self, folder: str) -> list[tuple[str, int, float]]:
        try:
            entries = self._fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        return [
            (
                str(entry["name"]).rstrip("/").rsplit("/", 1)[-1],
                int(entry.get("size") or 0),
                _mtime(entry),
            )
            for entry in entries
            if entry.get("type") == "file"
        ]

    def find(self, experiment: str, job_id: str, filename: str) -> ArtifactInfo | None:
        return _newest(job_id, filename, self._versions(self._folder(experiment, job_id, filename)))

    def list(self, experiment: str) -> list[ArtifactInfo]:
        root = f"{self._root}/{_experiment_key(experiment)}"
        try:
            paths = self._fs.find(root)
        except FileNotFoundError:
            return []
        names = set()
        for path in paths:
            parts = str(path).rstrip("/").rsplit("/", 3)
            if len(parts) == 4:
                names.add((parts[1], parts[2]))
        found = [self.find(experiment, job_id, filename) for job_id, filename in sorted(names)]
        return [info for info in found if info is not None]

    def open(self, experiment: str, info: ArtifactInfo) -> IO[bytes]:
        folder = self._folder(experiment, info.job_id, info.filename)
        handle: IO[bytes] = self._fs.open(f"{folder}/{info.sha256}", "rb")
        return handle

    def commit(self, local: str, experiment: str, job_id: str, filename: str, sha: str) -> None:
        folder = self._folder(experiment, job_id, filename)
        try:
            self._fs.makedirs(folder, exist_ok=True)
            self._fs.put_file(local, f"{folder}/{sha}")
        finally:
            os.remove(local)
        for name, _, _ in self._versions(folder):
            if name != sha:
                with contextlib.suppress(FileNotFoundError):
                    self._fs.rm(f"{folder}/{name}")

    def delete(self, experiment: str, job_id: str, filename: str) -> bool:
        folder = self._folder(experiment, job_id, filename)
        if not self._versions(folder):
            return False
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm(folder, recursive=True)
        return True

    def delete_experiment(self, experiment: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm(f"{self._root}/{_experiment_key(experiment)}", recursive=True)


def _mtime(entry: dict[str, Any]) -> float:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        timestamp = getattr(value, "timestamp", None)
        if callable(timestamp):
            return float(timestamp())
    return 0.0


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(name for name in os.listdir(folder) if not name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _newest(
    job_id: str, filename: str, versions: list[tuple[str, int, float]]
) -> ArtifactInfo | None:
    """The latest version (a job replaced its checkpoint: both exist for a moment)."""
    valid = [version for version in versions if _artifacts.is_sha256(version[0])]
    if not valid:
        return None
    name, size, _ = max(valid, key=lambda version: version[2])
    return ArtifactInfo(job_id, filename, size, name)


def open_store(location: str) -> ArtifactStore:
    """The artifact store at ``location``: a local folder, or an fsspec URL (``s3://…``)."""
    if "://" in location and not location.startswith("file://"):
        return _Remote(location)
    return _Folder(location.removeprefix("file://"))


# -- the routes ----------------------------------------------------------------
class StoredArtifact(BaseModel):
    """A stored artifact, as the server answers it."""

    job: str
    file: str
    size: int
    sha256: str


class ArtifactStatus(BaseModel):
    """Whether this server keeps artifacts (``enabled``), and the largest it accepts."""

    enabled: bool
    max_size: int


def _answer(info: ArtifactInfo) -> dict[str, Any]:
    return {"job": info.job_id, "file": info.filename, "size": info.size, "sha256": info.sha256}


def _refusal(error: Exception, status: int | None = None) -> Response:
    code, payload = _wire.encode_error(error, status)
    return Response(_wire.encode(payload), status_code=code, media_type=_wire.MEDIA_TYPE)


def _whole(pattern: str) -> dict[str, Any]:
    """A rule the route checks itself (a 400 in its own words), for the document:
    JSON Schema's ``pattern`` searches, so it is anchored."""
    return {"pattern": f"^{pattern}$"}


Route = Callable[..., Callable[[Callable[..., Any]], Any]]
ExperimentName = Annotated[str, Query(description="the experiment's name")]
JobId = Annotated[str, Query(description="the job's id", json_schema_extra=_whole(JOB_ID_PATTERN))]
FileName = Annotated[
    str,
    Query(
        description="the artifact's file name (e.g. `<job>.pt`): letters, digits and `._+-`, "
        "not starting with a dot",
        json_schema_extra=_whole(FILENAME_PATTERN),
    ),
]
Sha256 = Annotated[
    str,
    Query(
        description="the body's SHA-256, in lowercase hex",
        json_schema_extra=_whole(SHA256_PATTERN),
    ),
]
#: Bytes as they travel, for the document.
_BINARY = {"type": "string", "format": "binary"}
_TAG = {
    "ETag": {
        "description": "the artifact's SHA-256, quoted",
        "required": True,
        "schema": {"type": "string"},
    }
}
_LENGTH = {
    "Content-Length": {
        "description": "the artifact's size in bytes",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_SPAN = {
    "Content-Range": {
        "description": "`bytes <first>-<last>/<size>` (`bytes */<size>` on a 416)",
        "required": True,
        "schema": {"type": "string"},
    }
}
_BYTES_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The artifact's bytes",
        "content": {"application/octet-stream": {"schema": _BINARY}},
        "headers": _TAG,
    },
    206: {
        "description": "The span `Range` asked for (`If-Range` naming this artifact's ETag)",
        "content": {"application/octet-stream": {"schema": _BINARY}},
        "headers": {**_TAG, **_SPAN},
    },
    416: {
        "description": "The span `Range` asked for starts beyond the artifact's end",
        "headers": {**_TAG, **_SPAN},
    },
}


class ArtifactRoutes:
    """What the application needs of the artifact routes after installing them."""

    def __init__(self, storage: Storage, store: ArtifactStore | None, keep_top_k: int | None):
        self.storage = storage
        self.store = store
        self.keep_top_k = keep_top_k

    def forget(self, experiment: str) -> None:
        """An experiment was deleted: so are its artifacts."""
        if self.store is not None:
            self.store.delete_experiment(experiment)

    def prune(self, experiment: str) -> list[ArtifactInfo]:
        """Delete the experiment's artifacts no job can need (``schedy._retention``)."""
        if self.store is None or self.keep_top_k is None:
            return []
        listed = {  # listed before the snapshot is read: see schedy._retention
            _artifacts.artifact_url(experiment, info.job_id, info.filename): info
            for info in self.store.list(experiment)
        }
        if not listed:
            return []
        in_use = self.storage.jobs_in_use(experiment, self.keep_top_k)
        pairs = ((info.job_id, url) for url, info in listed.items())
        removed = []
        for url in _retention.deletable(pairs, in_use, key=_MODEL_PATH_KEY):
            info = listed[url]
            if self.store.delete(experiment, info.job_id, info.filename):
                removed.append(info)
        if removed:
            logger.debug("pruned %d artifacts of %r", len(removed), experiment)
        return removed


#: The result naming a job's checkpoint (the integrations' ``MODEL_PATH_KEY``).
_MODEL_PATH_KEY = "model_path"


def install(
    route: Route,
    storage: Storage,
    store: ArtifactStore | None,
    *,
    max_bytes: int,
    keep_top_k: int | None,
) -> ArtifactRoutes:
    """Add the artifact routes through the application's ``route`` helper (rules, docs).

    Without a ``store`` there are none: a client asking learns from the 404 that
    this server keeps no artifacts (as from a server older than artifacts)."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_artifact_bytes must be a whole number >= 1, not {max_bytes!r}")
    if keep_top_k is not None and (
        isinstance(keep_top_k, bool) or not isinstance(keep_top_k, int) or keep_top_k < 0
    ):
        raise ValueError(
            f"artifact_keep_top_k must be an int >= 0 or None (never prune), not {keep_top_k!r}"
        )
    routes = ArtifactRoutes(storage, store, keep_top_k)
    if store is None:
        return routes
    path = _artifacts.ARTIFACT_PATH

    kept: ArtifactStore = store

    async def job_of(experiment: str, job_id: str, filename: str) -> None:
        check_filename(filename)
        check_job_id(job_id)
        await anyio.to_thread.run_sync(storage.get_job, experiment, job_id)  # 404 if none

    @route("GET", _artifacts.ARTIFACT_STORE_PATH, TokenRole.READ, "read jobs", ArtifactStatus)
    def status() -> Any:
        """Whether this server keeps artifacts, and the largest it accepts (bytes)."""
        return {"enabled": True, "max_size": max_bytes}

    @route(
        "GET",
        _artifacts.ARTIFACTS_PATH,
        TokenRole.READ,
        "list artifacts",
        list[StoredArtifact],
        404,
    )
    def list_artifacts(experiment: ExperimentName) -> Any:
        """The experiment's artifacts."""
        found = kept
        storage.get_experiment(experiment)
        return [_answer(info) for info in found.list(experiment)]

    async def upload(
        request: Request,
        experiment: ExperimentName,
        job: JobId,
        file: FileName,
        sha256: Sha256,
        size: int,
    ) -> Any:
        """Stores the body as the job's artifact ``file``, checked against ``size`` and
        ``sha256``; then prunes the experiment's artifacts no job can need."""
        found = kept
        if not _artifacts.is_sha256(sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, not {sha256!r}")
        if size > max_bytes:
            return _too_large(max_bytes)
        await job_of(experiment, job, file)
        handle, temporary = tempfile.mkstemp(dir=found.staging(), suffix=".part")
        try:
            with os.fdopen(handle, "wb") as target:
                failure = await _receive(request, target, size, sha256, max_bytes)
            if failure is not None:
                return failure
            await anyio.to_thread.run_sync(found.commit, temporary, experiment, job, file, sha256)
        except ClientDisconnect:  # the worker went away mid-upload: nothing is kept
            logger.info("upload of %s/%s cut off by the client", job, file)
            return Response(status_code=400)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        try:
            await anyio.to_thread.run_sync(routes.prune, experiment)
        except Exception:  # housekeeping: the upload stands
            logger.warning("could not prune the artifacts of %r", experiment, exc_info=True)
        return Response(
            _wire.encode(_answer(ArtifactInfo(job, file, size, sha256))),
            status_code=201,
            media_type=_wire.MEDIA_TYPE,
        )

    # The size's rule holds this server's limit, a local: given as the annotation
    # itself (FastAPI would look the text of one up in the module). The route
    # checks the limit itself: a 413, as for a body too large.
    upload.__annotations__["size"] = Annotated[
        int,
        Query(
            description="the body's size in bytes, at most this server's limit",
            ge=0,
            json_schema_extra={"maximum": max_bytes},
        ),
    ]
    route(
        "PUT",
        path,
        TokenRole.WORKER,
        "upload artifacts",
        StoredArtifact,
        404,
        status_code=201,
        openapi_extra={
            "requestBody": {  # streamed by the route, so no parameter of its signature
                "description": "The artifact's bytes: `size` of them, hashing to `sha256` "
                "(any Content-Type; none when `size` is 0)",
                "content": {"application/octet-stream": {"schema": _BINARY}},
            }
        },
    )(upload)

    @route(
        "GET",
        path,
        TokenRole.READ,
        "download artifacts",
        None,
        404,
        raw=True,
        responses=_BYTES_ANSWERS,
    )
    async def download(
        experiment: ExperimentName,
        job: JobId,
        file: FileName,
        wanted: Annotated[
            str | None,
            Header(
                alias="Range",
                description="`bytes=<first>-<last>`, `bytes=<first>-` or `bytes=-<count>`: "
                "that span alone (206), a 416 if it starts past the end; another value, or "
                "several spans, is ignored (all of it)",
            ),
        ] = None,
        condition: Annotated[
            str | None,
            Header(
                alias="If-Range",
                description="the ETag `Range` holds for: another gets all of it (200)",
            ),
        ] = None,
    ) -> Any:
        """The artifact's bytes (``Range`` and ``If-Range`` honoured); ``ETag`` is its SHA-256."""
        info, handle = await anyio.to_thread.run_sync(_opened, kept, experiment, job, file)
        headers = {"etag": etag(info.sha256), "accept-ranges": "bytes"}
        start, end = 0, info.size - 1
        status = 200
        if wanted and (condition is None or condition == etag(info.sha256)):
            try:
                span = _byte_range(wanted, info.size)
            except _Unsatisfiable:
                handle.close()
                headers["content-range"] = f"bytes */{info.size}"
                return Response(status_code=416, headers=headers)
            if span is not None:
                start, end = span
                status = 206
                headers["content-range"] = f"bytes {start}-{end}/{info.size}"
        headers["content-length"] = str(end - start + 1)
        return StreamingResponse(
            _chunks(handle, start, end - start + 1),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    @route(
        "HEAD",
        path,
        TokenRole.READ,
        "download artifacts",
        None,
        404,
        raw=True,
        responses={
            200: {
                "description": "The artifact's size and SHA-256, without its bytes",
                "headers": {**_TAG, **_LENGTH},
            }
        },
    )
    def head(experiment: ExperimentName, job: JobId, file: FileName) -> Any:
        """The artifact's size (``Content-Length``) and SHA-256 (``ETag``), without its bytes."""
        check_filename(file)
        info = kept.find(experiment, check_job_id(job), file)
        if info is None:
            raise _missing(experiment, job, file)
        headers = {
            "etag": etag(info.sha256),
            "accept-ranges": "bytes",
            "content-length": str(info.size),
        }
        return Response(status_code=200, headers=headers, media_type="application/octet-stream")

    @route("DELETE", path, TokenRole.ADMIN, "delete artifacts", _wire.Done, 404)
    def delete(experiment: ExperimentName, job: JobId, file: FileName) -> Any:
        """Deletes one artifact."""
        check_filename(file)
        if not kept.delete(experiment, check_job_id(job), file):
            raise _missing(experiment, job, file)
        return {}

    return routes


def _missing(experiment: str, job_id: str, filename: str) -> NotFoundError:
    return NotFoundError(
        f"experiment {experiment!r} has no artifact {filename!r} of job {job_id!r} (never "
        "uploaded, or deleted once no job could continue from it)"
    )


def _opened(
    store: ArtifactStore, experiment: str, job_id: str, filename: str
) -> tuple[ArtifactInfo, IO[bytes]]:
    """The artifact and an open handle on it, or a 404 (it may go between the two)."""
    check_filename(filename)
    info = store.find(experiment, check_job_id(job_id), filename)
    if info is not None:
        try:
            return info, store.open(experiment, info)
        except FileNotFoundError:
            pass
    raise _missing(experiment, job_id, filename)


def _too_large(limit: int) -> Response:
    return _refusal(
        ValueError(
            f"the artifact is larger than this server's limit of {describe_size(limit)} "
            "(`schedy server --max-artifact-size`)"
        ),
        413,
    )


async def _receive(
    request: Request, target: IO[bytes], size: int, sha256: str, limit: int
) -> Response | None:
    """Stream the body to ``target`` while hashing it; the refusal if it is not what was
    declared (None when it is)."""
    digest = hashlib.sha256()
    received = 0
    pending: list[bytes] = []
    pending_bytes = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            return _too_large(limit)
        if received > size:
            break
        digest.update(chunk)
        pending.append(chunk)
        pending_bytes += len(chunk)
        if pending_bytes >= _CHUNK:  # written off the event loop, a MiB at a time
            await anyio.to_thread.run_sync(target.write, b"".join(pending))
            pending, pending_bytes = [], 0
    if received != size:
        return _refusal(
            ValueError(
                f"the upload holds {'more than ' if received > size else ''}{received} bytes, "
                f"not the {size} it declared: nothing was stored; upload it again"
            )
        )
    if digest.hexdigest() != sha256:
        return _refusal(
            ValueError(
                f"the upload's SHA-256 is {digest.hexdigest()}, not the {sha256} it declared "
                "(corrupted on the way): nothing was stored; upload it again"
            )
        )
    await anyio.to_thread.run_sync(target.write, b"".join(pending))
    await anyio.to_thread.run_sync(target.flush)
    await anyio.to_thread.run_sync(os.fsync, target.fileno())
    return None


class _Unsatisfiable(Exception):
    """A range that lies beyond the artifact's end (416)."""


#: One span of a ``Range`` header, in ASCII digits (``str.isdigit`` also takes ``²``).
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The one range ``bytes=a-b`` / ``a-`` / ``-n`` asks for (inclusive); None to send
    everything (several ranges, or a header this does not read); :class:`_Unsatisfiable`
    when it lies beyond the end."""
    unit, _, spec = header.partition("=")
    found = _RANGE_SPEC.fullmatch(spec.strip())
    if unit.strip().lower() != "bytes" or found is None or not any(found.groups()):
        return None
    first, last = found.groups()
    if not first:  # the last n bytes
        count = _number(last)
        if not count or not size:
            raise _Unsatisfiable
        return max(0, size - count), size - 1
    start = _number(first)
    end = min(_number(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise _Unsatisfiable
    return start, end


def _number(digits: str) -> int:
    """ASCII digits as a number; one longer than any size reads as larger than any
    size (int() refuses one of over 4300 digits, and a header may hold more)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 20 else 2**70


def _chunks(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    """The bytes ``start`` to ``start + length`` of ``handle``, a MiB at a time, then closed
    (a sync iterator: Starlette reads it in its thread pool)."""
    with handle:
        handle.seek(start)
        left = length
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
