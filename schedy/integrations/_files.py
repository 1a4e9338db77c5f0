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
  results name does not exist.

A leaf module: it imports nothing from :mod:`schedy.integrations`, and no
framework.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

__all__ = [
    "MODEL_PATH_KEY",
    "PathLike",
    "atomic_write",
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
    try:
        if is_url(path):
            filesystem(path).rm(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        return False  # e.g. another worker pruned it first
    return True
