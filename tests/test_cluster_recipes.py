"""The cluster recipes in examples/cluster: what can be run or checked here is.

The SLURM script's body runs with the environment SLURM gives an array task;
the Kubernetes manifests are validated against the Kubernetes schemas, and
the names they refer to each other by are checked to match.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import schedy

CLUSTER = Path(__file__).parent.parent / "examples" / "cluster"
SBATCH = CLUSTER / "slurm" / "schedy-workers.sbatch"
MANIFESTS = sorted((CLUSTER / "kubernetes").glob("*.yaml"))

WORKER = textwrap.dedent(
    """
    import os, pathlib, schedy
    experiment = schedy.SchedyDB().get_experiment(os.environ["SCHEDY_EXPERIMENT"])
    token = pathlib.Path(os.environ["TOKEN_SEEN"])
    token.write_text(os.environ.get("SCHEDY_TOKEN", ""))
    while True:
        try:
            job = experiment.next_job(timeout=30)
        except schedy.errors.NoJobError:
            break
        with job:
            job.results["acc"] = job.hyperparameters["lr"]
    """
)


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "SCHEDY_", "CUDA_"))
    }
    env.update(
        SLURM_ARRAY_TASK_ID="3",
        SLURM_ARRAY_JOB_ID="4242",
        SLURM_JOB_ID="4245",
        SLURM_CPUS_PER_GPU="8",
        PYTHON=sys.executable,
        TRAIN_SCRIPT=str(tmp_path / "train.py"),
        TOKEN_SEEN=str(tmp_path / "token-seen"),
    )
    env.update(extra)
    return env


@pytest.mark.slow
def test_the_slurm_array_task_runs_workers_until_the_experiment_is_done(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/schedy.db"
    db = schedy.SchedyDB(url, create=True) if _takes_create() else schedy.SchedyDB(url)
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "cluster",
            schedy.pbt.MAXIMIZE,
            "acc",
            exploit=schedy.pbt.Truncate(0.5),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions={"lr": schedy.random.Uniform(0.1, 1.0)},
            population_size=2,
            max_generations=3,
        )
    )
    (tmp_path / "train.py").write_text(WORKER)
    token_file = tmp_path / "worker-token"
    token_file.write_text("  a-worker-token-0123456789\n")  # as an editor leaves it
    env = _environment(
        tmp_path,
        SCHEDY_URL=url,
        SCHEDY_EXPERIMENT="cluster",
        SCHEDY_WORKERS="2",
        SCHEDY_TOKEN_FILE=str(token_file),
    )
    finished = subprocess.run(
        ["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "array task 3 of job 4242" in finished.stdout
    assert "2 worker(s) on cluster" in finished.stdout
    assert (tmp_path / "token-seen").read_text() == "a-worker-token-0123456789"
    experiment = db.get_experiment("cluster")
    assert experiment.status == schedy.Experiment.DONE
    assert all(job.status == schedy.Job.DONE for job in experiment.all_jobs())


def _takes_create() -> bool:
    import inspect

    return "create" in inspect.signature(schedy.SchedyDB).parameters


def test_the_slurm_script_says_what_is_missing(tmp_path: Path) -> None:
    finished = subprocess.run(
        ["bash", str(SBATCH)], env=_environment(tmp_path), capture_output=True, text=True
    )
    assert finished.returncode != 0
    assert "set SCHEDY_URL" in finished.stderr


def test_the_slurm_script_asks_for_preemption_warning_and_requeue() -> None:
    text = SBATCH.read_text()
    assert "#SBATCH --signal=B:TERM@" in text and "#SBATCH --requeue" in text
    assert 'exec "$PYTHON" -m schedy' in text  # SIGTERM reaches schedy worker itself
    assert "--token" not in text.replace("SCHEDY_TOKEN", "")  # no secret on a command line


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    yaml = pytest.importorskip("yaml")
    found = []
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path, document))
    return found


def test_the_kubernetes_manifests_are_valid() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (in the dev extra)"
    )
    documents = _documents()
    assert {document["kind"] for _, document in documents} >= {
        "Namespace",
        "Secret",
        "StatefulSet",
        "Service",
        "Deployment",
        "Job",
    }
    for _, document in documents:
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_the_manifests_refer_to_what_they_define() -> None:
    documents = [document for _, document in _documents()]
    defined = {(document["kind"], document["metadata"]["name"]) for document in documents}
    assert all(
        document["metadata"].get("namespace", "schedy") == "schedy" for document in documents
    )
    text = "\n".join(path.read_text() for path in MANIFESTS)
    for secret in ("schedy-database", "schedy-tokens"):
        assert ("Secret", secret) in defined and f"name: {secret}" in text
    assert ("Service", "schedy-server") in defined and "http://schedy-server:8080" in text
    workers = next(document for document in documents if document["kind"] == "Job")
    assert workers["spec"]["completionMode"] == "Indexed"
    container = workers["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][2] == "worker" and "--" in container["args"]
    server = next(document for document in documents if document["kind"] == "Deployment")
    probe = server["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/api/v1/health"
    # Checkpoints through the servers: every replica serves one artifact store,
    # and the workers mount nothing.
    pod = server["spec"]["template"]["spec"]
    assert "--artifacts /artifacts" in pod["containers"][0]["args"][0]
    (volume,) = pod["volumes"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in defined
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/artifacts"
    assert "volumes" not in workers["spec"]["template"]["spec"]
