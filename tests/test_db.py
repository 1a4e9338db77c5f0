"""SchedyDB: choosing the backend from a URL, schema versions, unreachable stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

import schedy
from schedy.errors import SchemaVersionError, StorageError


def test_default_url_is_embedded_sqlite_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = schedy.SchedyDB()
    assert db.url == "sqlite:///./schedy.db"
    db.add_experiment(schedy.ManualSearch("x"))
    assert (tmp_path / "schedy.db").exists()


def test_schedy_url_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("SCHEDY_URL", url)
    assert schedy.SchedyDB().url == url


def test_bare_path_is_a_sqlite_file(tmp_path: Path) -> None:
    db = schedy.SchedyDB(str(tmp_path / "bare.db"))
    db.add_experiment(schedy.ManualSearch("x"))
    assert (tmp_path / "bare.db").exists()


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("ftp://host/x", ValueError, "unsupported store URL"),
        ("http://user:pw@127.0.0.1:1", ValueError, "holds credentials"),
        ("http://:8080", ValueError, "invalid schedy server URL"),
        ("sqlite:////no/such/folder/x.db", StorageError, "does not exist"),
        ("", TypeError, "non-empty string"),
    ],
)
def test_bad_urls(url: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        schedy.SchedyDB(url)


def test_unreachable_postgres_is_a_clear_storage_error() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StorageError, match="Check that the database is running"):
        schedy.SchedyDB(
            "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
        )


def test_bad_lease(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        schedy.SchedyDB(f"sqlite:///{tmp_path}/x.db", lease_seconds=0)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    schedy.SchedyDB(url).add_experiment(schedy.ManualSearch("kept"))
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE schedy_meta SET value = '999' WHERE key = 'schema_version'"
        )
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="newer schedy"):
        schedy.SchedyDB(url)
    with engine.begin() as connection:  # nothing was touched
        assert connection.exec_driver_sql("SELECT name FROM schedy_experiments").scalar() == "kept"


def test_reopening_keeps_data_and_kinds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    first = schedy.SchedyDB(url)
    first.add_experiment(schedy.RandomSearch("r", {"x": schedy.random.IntUniform(1, 3)}, seed=3))
    first.close()
    experiment = schedy.SchedyDB(url).get_experiment("r")
    assert isinstance(experiment, schedy.RandomSearch) and experiment.seed == 3
    with experiment.next_job() as job:
        assert job.hyperparameters["x"] in (1, 2, 3)


def test_add_experiment_type_checks(tmp_path: Path) -> None:
    db = schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(TypeError, match="expects a schedy experiment"):
        db.add_experiment("not an experiment")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not stored yet"):
        schedy.ManualSearch("loose").next_job()


def test_import_schedy_pulls_no_ml_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, schedy\n"
        "print([m for m in ('torch', 'keras', 'lightning') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_names() -> None:
    assert set(schedy.__all__) == {
        "Experiment",
        "Hyperband",
        "Job",
        "ManualSearch",
        "PB2",
        "PopulationBasedTraining",
        "RandomSearch",
        "Replay",
        "SchedyDB",
        "SuccessiveHalving",
        "errors",
        "pbt",
        "random",
        "run_workers",
    }
    assert os.path.basename(schedy.__file__) == "__init__.py"


def test_lease_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    monkeypatch.setenv("SCHEDY_LEASE_SECONDS", "2.5")
    assert schedy.SchedyDB(url)._lease_seconds == 2.5
    assert schedy.SchedyDB(url, lease_seconds=7)._lease_seconds == 7
    monkeypatch.setenv("SCHEDY_LEASE_SECONDS", "soon")
    with pytest.raises(ValueError, match="SCHEDY_LEASE_SECONDS"):
        schedy.SchedyDB(url)


@pytest.mark.parametrize("lease", ["inf", "1e308", "nan", "0", "-5"])
def test_an_endless_lease_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lease: str
) -> None:
    # A SIGKILLed worker's job would stay RUNNING for ever, and its member with it.
    url = f"sqlite:///{tmp_path}/x.db"
    with pytest.raises(ValueError, match="lease_seconds must be a finite number"):
        schedy.SchedyDB(url, lease_seconds=float(lease))
    monkeypatch.setenv("SCHEDY_LEASE_SECONDS", lease)
    with pytest.raises(ValueError, match=r"\$SCHEDY_LEASE_SECONDS must be a finite number"):
        schedy.SchedyDB(url)


def test_a_job_refuses_to_be_pickled_with_a_clear_reason(sqlite_url: str) -> None:
    # ddp_spawn and multiprocessing pickle what they send; a copy of a job in
    # another process would hold this process's lease: say so, early.
    import copy
    import pickle

    with schedy.SchedyDB(sqlite_url) as db:
        db.add_experiment(schedy.ManualSearch("m"))
        experiment = db.get_experiment("m")
        experiment.add_job({"x": 1})
        with experiment.next_job() as job:
            for send in (pickle.dumps, copy.deepcopy):
                with pytest.raises(
                    TypeError, match=r"cannot be pickled .* one worker process per GPU"
                ):
                    send(job)
        assert experiment.get_job(job.id).status == schedy.Job.DONE
