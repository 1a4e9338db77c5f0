"""Checkpoint files, local or at an fsspec URL: the one place the integrations touch storage.

The integrations write, read, list and delete checkpoints that every worker
must reach, in a local (shared) folder or at a URL such as ``s3://bucket/dir``
(``memory://`` in tests). This module holds that file handling once:

- :func:`is_url`, :func:`fsspec_module` (fsspec imported only for a URL, with
  a clear error when it is missing), :func:`fsspec_available` and
  :func:`filesystem` (the fsspec filesystem of a URL);
- :func:`atomic_write`: a checkpoint is written whole or not at all (locally:
  a temporary file in the same folder, then ``os.replace``; at a URL: written
  locally, then put);
- :func:`local_copy`: a local file holding a checkpoint, for libraries that
  read local files only (a URL is fetched to a temporary folder);
- :func:`list_files` and :func:`remove_file`, for pruning;
- :func:`missing_checkpoint`: the error a job gets when the checkpoint its
  results name does not exist;
- artifacts (:func:`artifact_location`): when a job came from a schedy server
  that keeps artifacts and no checkpoint folder is configured, its checkpoint
  is named ``schedy://<experiment>/<job>/<file>``; :func:`atomic_write` then
  writes it into the local cache and uploads it from there (streamed, its
  SHA-256 checked by the server), and :func:`local_copy` yields the cached
  file -- downloaded (streamed, resumed, hash-checked) only when the cache
  lacks the bytes the server holds, so a member continuing on the same
  machine reads its own checkpoint from disk. The cache is
  ``$SCHEDY_CACHE`` (default ``~/.cache/schedy``), bounded by
  ``$SCHEDY_CACHE_MB`` (default 10240), least recently used files going
  first.

A leaf module: it imports nothing from :mod:`schedy.integrations`, and no
framework; it reaches a server through the job's store (``schedy._artifacts``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

from .. import _artifacts
from .._artifacts import ArtifactClient, ArtifactName
from ..errors import StorageError

__all__ = [
    "CACHE_ENV",
    "CACHE_MB_ENV",
    "MODEL_PATH_KEY",
    "PathLike",
    "artifact_location",
    "atomic_write",
    "cache_dir",
    "filesystem",
    "fsspec_available",
    "fsspec_module",
    "is_url",
    "list_files",
    "local_copy",
    "missing_checkpoint",
    "remove_file",
]

#: The result that names the checkpoint a job continues from (the original
#: client's key: PBT copies it from the parent, so an exploited job reloads the
#: better member's checkpoint).
MODEL_PATH_KEY = "model_path"

PathLike: TypeAlias = str | os.PathLike[str]

logger = logging.getLogger(__name__)

#: Where downloaded and uploaded artifacts are cached (default ``~/.cache/schedy``).
CACHE_ENV = "SCHEDY_CACHE"
#: The cache's bound, in MiB.
CACHE_MB_ENV = "SCHEDY_CACHE_MB"
_DEFAULT_CACHE_MB = 10240
#: Unfinished cache files older than this belong to no living process.
_STALE_S = 24 * 3600.0


# -- URLs and fsspec -------------------------------------------------------
def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` paths (fsspec URLs such as ``s3://bucket/dir``)."""
    return "://" in os.fspath(path)


def fsspec_module() -> Any:
    """fsspec, imported only for URL checkpoint paths, with a clear error if absent."""
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            "checkpoint paths that are URLs need fsspec (and its driver, e.g. s3fs): "
            "pip install fsspec"
        ) from None
    return fsspec


def fsspec_available() -> bool:
    """Whether fsspec is installed (without importing it)."""
    return importlib.util.find_spec("fsspec") is not None


def filesystem(url: str) -> Any:
    """The fsspec filesystem of a URL's protocol (``s3://…``, ``memory://…``)."""
    return fsspec_module().filesystem(_protocol(url))


def _protocol(url: str) -> str:
    return url.split("://", 1)[0]


# -- missing checkpoints ---------------------------------------------------
def missing_checkpoint(job_id: str, path: str) -> FileNotFoundError:
    """The error for a job whose results name a checkpoint ``path`` that does not exist."""
    return FileNotFoundError(
        f"job {job_id} continues from checkpoint {path} (its results' {MODEL_PATH_KEY!r}), "
        "which does not exist: checkpoints must be on storage every worker reads, and not "
        "be deleted while a job may continue from them"
    )


# -- writing and reading ---------------------------------------------------
def atomic_write(path: str, write: Callable[[str], object], *, suffix: str = "") -> None:
    """Write checkpoint ``path`` whole or not at all: a worker killed mid-save leaves no torn file.

    ``write(local)`` writes the checkpoint to the local file name it is given
    (which ends with ``suffix``, for libraries that insist on one). Locally
    that is a temporary file in ``path``'s folder, then moved over ``path``
    with ``os.replace`` (removed if anything fails); for a URL it is a file
    in a temporary folder, then put at the URL.
    """
    if _artifacts.is_artifact_url(path):
        _upload(path, write, suffix)
        return
    if is_url(path):
        fs, location = fsspec_module().core.url_to_fs(path)
        with tempfile.TemporaryDirectory(prefix="schedy-") as folder:
            local = os.path.join(folder, "checkpoint" + suffix)
            write(local)
            fs.makedirs(location.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(local, location)
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def local_copy(path: str, job_id: str) -> Iterator[str]:
    """A local file holding the checkpoint ``path`` that job ``job_id`` continues from.

    A local path is checked to exist; a URL is fetched to a temporary folder,
    removed on exit. A missing checkpoint raises :func:`missing_checkpoint`'s
    error either way.
    """
    if _artifacts.is_artifact_url(path):
        yield _cached_download(path, job_id)
        return
    if not is_url(path):
        if not os.path.isfile(path):
            raise missing_checkpoint(job_id, path)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="schedy-") as folder:
        local = os.path.join(folder, path.rstrip("/").rsplit("/", 1)[-1])
        try:
            with fsspec_module().open(path, "rb") as source, open(local, "wb") as target:
                shutil.copyfileobj(source, target)
        except FileNotFoundError as error:
            raise missing_checkpoint(job_id, path) from error
        yield local


# -- listing and removing, for pruning -------------------------------------
def list_files(directory: str) -> list[str]:
    """The files directly in ``directory`` (full paths, or URLs for a URL); ``[]`` if none.

    A local folder that does not exist holds no files.
    """
    _not_an_artifact(directory)
    if is_url(directory):
        protocol = _protocol(directory)
        entries = filesystem(directory).ls(directory, detail=False)
        return [e if is_url(e) else f"{protocol}://{e.lstrip('/')}" for e in entries]
    if not os.path.isdir(directory):
        return []
    paths = (os.path.join(directory, name) for name in os.listdir(directory))
    return [path for path in paths if os.path.isfile(path)]


def remove_file(path: str) -> bool:
    """Delete ``path`` (a local file or a URL); False if it was gone already."""
    _not_an_artifact(path)
    try:
        if is_url(path):
            filesystem(path).rm(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        return False  # e.g. another worker pruned it first
    return True


# -- artifacts on a schedy server -------------------------------------------
def artifact_location(job_id: str, suffix: str) -> str | None:
    """``schedy://<experiment>/<job>/<job><suffix>`` when job ``job_id`` came from a
    schedy server that keeps artifacts; None otherwise (checkpoints go to a folder)."""
    found = _artifacts.client_for(job_id)
    if found is None:
        return None
    client, experiment = found
    if not client.keeps_artifacts():
        return None
    _register_filesystem()
    return _artifacts.artifact_url(experiment, job_id, f"{job_id}{suffix}")


def _register_filesystem() -> None:
    """Make ``schedy://`` an fsspec protocol too, for libraries that save and load through
    fsspec themselves (Lightning's ``trainer.save_checkpoint``): same cache, same uploads."""
    if not fsspec_available():
        return
    fsspec = fsspec_module()
    if _artifacts.SCHEME in fsspec.registry:
        return

    class ArtifactFileSystem(fsspec.AbstractFileSystem):  # type: ignore[misc,name-defined]
        """Artifacts of a schedy server as an fsspec file system (files only)."""

        protocol = _artifacts.SCHEME

        @classmethod
        def _strip_protocol(cls, path: Any) -> Any:
            path = str(path)
            return path if _artifacts.is_artifact_url(path) else f"{_artifacts.SCHEME}://{path}"

        def makedirs(self, path: str, exist_ok: bool = False) -> None:
            """Artifacts have no folders to make."""

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            name = _artifacts.parse_artifact_url(path)
            found = _client(name, path, name.job_id).artifact_info(*name)
            if found is None:
                raise FileNotFoundError(path)
            return {"name": path, "size": found.size, "type": "file"}

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            if "r" in mode:
                return open(
                    _cached_download(path, _artifacts.parse_artifact_url(path).job_id), "rb"
                )
            return _Upload(path)

    fsspec.register_implementation(_artifacts.SCHEME, ArtifactFileSystem, clobber=True)


class _Upload:
    """A file opened for writing at a ``schedy://`` name: written locally, uploaded on close
    (nothing is uploaded when the ``with`` block fails)."""

    def __init__(self, url: str) -> None:
        self.url = url
        handle, self._local = tempfile.mkstemp(dir=cache_dir(), prefix=".tmp-")
        self._file = os.fdopen(handle, "wb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        try:
            atomic_write(self.url, lambda local: os.replace(self._local, local))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._local)

    def commit(self) -> None:
        """fsspec transactions: the upload on close is the commit."""

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._local)

    def __enter__(self) -> _Upload:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()


def _not_an_artifact(path: str) -> None:
    if _artifacts.is_artifact_url(path):
        raise ValueError(
            f"{path} is kept by a schedy server, which prunes its artifacts itself "
            "(`schedy server --artifact-keep-top-k`): there is no folder to list or prune"
        )


def _client(name: ArtifactName, url: str, job_id: str) -> ArtifactClient:
    found = _artifacts.client_for(job_id, name.experiment) or _artifacts.client_for(name.job_id)
    if found is None:
        raise ValueError(
            f"checkpoint {url} is kept by a schedy server, but no schedy server handed out "
            f"job {job_id} in this process: take the job from SchedyDB('http(s)://…') (the "
            "server holding the checkpoint), or give a checkpoint folder every worker reads"
        )
    return found[0]


def cache_dir() -> str:
    """The local artifact cache: ``$SCHEDY_CACHE/artifacts`` (default ``~/.cache/schedy``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "schedy",
    )
    folder = os.path.join(os.path.abspath(os.path.expanduser(root)), "artifacts")
    os.makedirs(folder, exist_ok=True)
    return folder


def _cache_bound() -> int:
    text = os.environ.get(CACHE_MB_ENV, "").strip()
    try:
        megabytes = float(text) if text else _DEFAULT_CACHE_MB
    except ValueError:
        raise ValueError(f"${CACHE_MB_ENV} must be a number of MiB, not {text!r}") from None
    return int(megabytes * 2**20)


def _cache_name(sha256: str, filename: str) -> str:
    """A cached file: named by its content's hash, ending like its artifact (``.weights.h5``)."""
    _, dot, extension = filename.partition(".")
    return sha256 + dot + extension


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _upload(url: str, write: Callable[[str], object], suffix: str) -> None:
    """Write an artifact into the cache, then stream it to its server."""
    name = _artifacts.parse_artifact_url(url)
    client = _client(name, url, name.job_id)
    folder = cache_dir()
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        sha256 = _sha256_of(temporary)
        cached = os.path.join(folder, _cache_name(sha256, name.filename))
        os.replace(temporary, cached)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    client.upload_artifact(name.experiment, name.job_id, name.filename, cached, sha256)
    _trim_cache(folder, keep=cached)


def _cached_download(url: str, job_id: str) -> str:
    """A local file holding artifact ``url``: the cache's, downloaded if it lacks it."""
    name = _artifacts.parse_artifact_url(url)
    client = _client(name, url, job_id)
    folder = cache_dir()
    for attempt in range(2):
        info = client.artifact_info(*name)
        if info is None:
            raise missing_checkpoint(job_id, url)
        cached = os.path.join(folder, _cache_name(info.sha256, name.filename))
        with contextlib.suppress(FileNotFoundError):
            if os.path.getsize(cached) == info.size:
                os.utime(cached)  # recently used: the last to be evicted
                logger.debug("job %s: %s read from the cache", job_id, url)
                return cached
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        os.close(handle)
        try:
            client.download_artifact(*name, temporary, info)
            os.replace(temporary, cached)
        except StorageError:
            if attempt:
                raise
            logger.warning("job %s: downloading %s failed once; again", job_id, url, exc_info=True)
            continue
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        _trim_cache(folder, keep=cached)
        return cached
    raise AssertionError("unreachable")  # pragma: no cover


def _trim_cache(folder: str, keep: str) -> None:
    """Evict the least recently used cached files beyond the bound (never ``keep``), and
    unfinished ones a killed process left."""
    bound = _cache_bound()
    now = time.time()
    files = []
    for entry in os.scandir(folder):
        with contextlib.suppress(FileNotFoundError):
            stat = entry.stat()
            if entry.name.startswith(".tmp-"):
                if stat.st_mtime < now - _STALE_S:
                    os.remove(entry.path)
                continue
            files.append((stat.st_mtime, stat.st_size, entry.path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= bound:
            break
        if path == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        total -= size
