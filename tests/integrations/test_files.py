"""Checkpoint file handling (_files): URLs, atomic writes, local copies, listing, one error."""

from __future__ import annotations

import ast
import os
import uuid
from pathlib import Path

import pytest

import schedy.integrations
from schedy.integrations import _files


def _memory_folder() -> str:
    return f"memory://schedy-files-{uuid.uuid4().hex}"


def test_is_url() -> None:
    assert _files.is_url("s3://bucket/dir")
    assert _files.is_url("memory://x")
    assert not _files.is_url("/tmp/checkpoints")
    assert not _files.is_url(Path("relative/dir"))


def test_the_missing_checkpoint_error_names_the_job_the_path_and_the_advice() -> None:
    error = _files.missing_checkpoint("j7", "/shared/ckpt/j3.pt")
    assert isinstance(error, FileNotFoundError)
    assert str(error) == (
        "job j7 continues from checkpoint /shared/ckpt/j3.pt (its results' 'model_path'), "
        "which does not exist: checkpoints must be on storage every worker reads, and not "
        "be deleted while a job may continue from them"
    )


# -- atomic_write ------------------------------------------------------------
def test_atomic_write_makes_the_folder_and_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "j.pt"
    written: list[str] = []

    def write(local: str) -> None:
        written.append(local)
        Path(local).write_text("first")

    _files.atomic_write(str(path), write, suffix=".pt")
    assert path.read_text() == "first"
    local = Path(written[0])
    assert local.parent == path.parent and local.name.endswith(".pt") and local != path
    _files.atomic_write(str(path), lambda local: Path(local).write_text("second"))
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["j.pt"]  # no temporary left


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "j.pt"
    path.write_text("old")

    def torn(local: str) -> None:
        Path(local).write_text("half")
        raise KeyboardInterrupt  # even a worker interrupted mid-save

    with pytest.raises(KeyboardInterrupt):
        _files.atomic_write(str(path), torn, suffix=".pt")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["j.pt"]


def test_atomic_write_to_a_url_puts_a_local_file() -> None:
    fsspec = pytest.importorskip("fsspec")
    url = f"{_memory_folder()}/ckpt/j.weights.h5"
    names: list[str] = []

    def write(local: str) -> None:
        names.append(os.path.basename(local))
        Path(local).write_bytes(b"weights")

    _files.atomic_write(url, write, suffix=".weights.h5")
    assert names[0].endswith(".weights.h5")  # a suffix the library insists on is kept
    with fsspec.open(url, "rb") as file:
        assert file.read() == b"weights"


def test_a_failed_write_to_a_url_puts_nothing() -> None:
    fsspec = pytest.importorskip("fsspec")
    url = f"{_memory_folder()}/ckpt/j.pt"

    def fail(local: str) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _files.atomic_write(url, fail)
    assert not fsspec.filesystem("memory").exists(url)


# -- local_copy --------------------------------------------------------------
def test_local_copy_of_a_local_file_is_the_file(tmp_path: Path) -> None:
    path = tmp_path / "j.pt"
    path.write_text("x")
    with _files.local_copy(str(path), "j2") as local:
        assert local == str(path)


@pytest.mark.parametrize("url", [False, True])
def test_local_copy_of_a_missing_checkpoint(tmp_path: Path, url: bool) -> None:
    if url:
        pytest.importorskip("fsspec")
    path = f"{_memory_folder()}/gone.pt" if url else str(tmp_path / "gone.pt")
    with (
        pytest.raises(FileNotFoundError, match=r"job j2 continues from checkpoint .*gone\.pt"),
        _files.local_copy(path, "j2"),
    ):
        pass  # pragma: no cover - never entered


def test_local_copy_fetches_a_url_and_removes_it_after() -> None:
    fsspec = pytest.importorskip("fsspec")
    url = f"{_memory_folder()}/ckpt/j.weights.h5"
    with fsspec.open(url, "wb") as file:
        file.write(b"weights")
    with _files.local_copy(url, "j2") as local:
        assert os.path.basename(local) == "j.weights.h5"
        assert Path(local).read_bytes() == b"weights"
    assert not os.path.exists(local)


# -- listing and removing ----------------------------------------------------
def test_list_and_remove_local_files(tmp_path: Path) -> None:
    (tmp_path / "a.pt").write_text("a")
    (tmp_path / "sub").mkdir()  # folders are not listed
    assert _files.list_files(str(tmp_path)) == [str(tmp_path / "a.pt")]
    assert _files.list_files(str(tmp_path / "missing")) == []
    assert _files.remove_file(str(tmp_path / "a.pt")) is True
    assert _files.remove_file(str(tmp_path / "a.pt")) is False  # gone already
    assert _files.list_files(str(tmp_path)) == []


def test_list_and_remove_files_at_a_url() -> None:
    fsspec = pytest.importorskip("fsspec")
    folder = _memory_folder()
    with fsspec.open(f"{folder}/a.pt", "w") as file:
        file.write("a")
    assert _files.list_files(folder) == [f"{folder}/a.pt"]
    assert _files.remove_file(f"{folder}/a.pt") is True
    assert _files.remove_file(f"{folder}/a.pt") is False
    assert _files.list_files(folder) == []


# -- structure ---------------------------------------------------------------
def _imports(module: object) -> set[str]:
    """The modules a module's source imports (absolute names; relative ones keep their dots)."""
    tree = ast.parse(Path(str(getattr(module, "__file__", ""))).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            dots = "." * node.level
            if node.module:
                names.add(dots + node.module)
            else:  # from .. import x: the module ..x
                names.update(dots + alias.name for alias in node.names)
    return names


def test_files_is_a_leaf_of_the_integrations() -> None:
    imported = _imports(_files)
    # Nothing from schedy.integrations; below it, only the errors and the
    # artifact names every side shares.
    below = {"..errors", ".._artifacts"}
    assert not {name for name in imported if name.startswith(".") and name not in below}
    assert not {name for name in imported if name.startswith("schedy")}


def test_no_import_cycle_among_the_integrations() -> None:
    from schedy.integrations import _checkpoints, _core

    assert "._core" not in _imports(_checkpoints)
    assert not {"._checkpoints", "._core"} & _imports(_files)
    assert "._files" in _imports(_checkpoints) and "._checkpoints" in _imports(_core)
    assert schedy.integrations.MissingMetricError is _core.MissingMetricError
