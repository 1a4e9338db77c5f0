"""The README's framework scripts, run as a user would: ``schedy worker --workers 2``.

Each of ``examples/integrations/{lightning,keras,transformers}_pbt.py`` creates
its experiment, then runs a whole (tiny) PBT experiment under two worker
processes on synthetic data: it must end DONE with every job DONE, exploits
that perturbed the explored hyperparameters, one TensorBoard run per member,
and -- for Lightning, whose checkpoints hold the optimizer's state -- the
explored values in the optimizer that trained each remaining checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import schedy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "integrations"

CASES = {
    "lightning": ("lightning PBT", ["learning_rate", "weight_decay"]),
    "keras": ("keras PBT", ["learning_rate", "beta_1"]),
    "transformers": ("transformers PBT", ["learning_rate", "weight_decay"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("framework", sorted(CASES))
def test_the_example_runs_a_whole_experiment_under_schedy_worker(
    framework: str, tmp_path: Path
) -> None:
    # Looked up, not imported: Keras would pick its backend in this process.
    for package in (framework, "tensorboard", "torch"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")
    name, explored = CASES[framework]
    script = str(EXAMPLES / f"{framework}_pbt.py")
    url = f"sqlite:///{tmp_path}/schedy.db"
    env = {**os.environ, "SCHEDY_URL": url, "KERAS_BACKEND": "torch"}
    env.pop("SCHEDY_CHECKPOINT_DIR", None)
    subprocess.run([sys.executable, script, "--create"], cwd=tmp_path, env=env, check=True)
    worker = [sys.executable, "-m", "schedy", "worker", name, "--workers", "2", "--quiet"]
    done = subprocess.run(
        [*worker, "--", sys.executable, script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    experiment = schedy.SchedyDB(url).get_experiment(name)
    assert experiment.status == schedy.Experiment.DONE
    jobs = list(experiment.all_jobs())
    assert all(job.status == schedy.Job.DONE for job in jobs), [job.error for job in jobs]
    by_id = {job.id: job for job in jobs}
    # Each of the 4 members trained to its third generation, or was ended early
    # as a straggler, saying why. How many jobs that took depends on timing (an
    # exploit copies the donor's generation), so the lineage is checked instead.
    members = experiment.population()
    assert len(members) == 4
    for member in members:
        assert member.ended
        assert member.head_generation == 2 or "straggler" in (member.ended_reason or ""), member
    for job in jobs:
        parent = by_id.get(job.parent_id) if job.parent_id else None
        assert job.generation == (0 if parent is None else parent.generation + 1)
    exploits = [job for job in jobs if job.exploited_from is not None]
    assert exploits
    for job in exploits:  # explored: every explored value differs from the copied one
        source = by_id[job.exploited_from]
        for hyperparameter in explored:
            assert job.hyperparameters[hyperparameter] != source.hyperparameters[hyperparameter]
    runs = sorted(os.listdir(tmp_path / "tb"))
    assert runs == [f"member_{member:03d}" for member in range(4)]
    if framework == "lightning":
        import torch

        checked = 0
        for job in jobs:
            path = Path(job.results["model_path"])
            if not path.exists():  # pruned
                continue
            state = torch.load(path, map_location="cpu", weights_only=False)
            group = state["optimizer_states"][0]["param_groups"][0]
            assert group["lr"] == pytest.approx(job.hyperparameters["learning_rate"])
            assert group["weight_decay"] == pytest.approx(job.hyperparameters["weight_decay"])
            checked += 1
        assert checked
        logs = tmp_path / "lightning_logs" / "lightning_PBT"
        assert sorted(os.listdir(logs)) == runs
        assert not list(tmp_path.rglob("version_*"))
