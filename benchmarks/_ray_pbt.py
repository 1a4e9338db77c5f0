"""Ray Tune's Population Based Training on the PBT paper's toy problem.

The Ray Tune side of ``benchmarks/pbt_quality.py`` (imported only when ``ray``
is importable): the same toy as ``examples/toy_pbt.py`` -- θ from (0.9, 0.9),
gradient ascent (lr 0.01) on Q̂(θ|h) = 1.2 - (h0·θ0² + h1·θ1²), scored by
Q(θ) = 1.2 - (θ0² + θ1²) -- as a function trainable that reports Q with a
checkpoint of θ every ``interval`` gradient steps, under
``ray.tune.schedulers.PopulationBasedTraining`` (asynchronous, Ray's default)
with ``time_attr='step'`` (gradient steps behind the model, which a clone
inherits from the checkpoint), ``perturbation_interval=interval``,
``quantile_fraction=0.25`` and ``resample_probability=0.25``.

Settings Ray cannot match exactly, kept at Ray's defaults and said here:
Ray multiplies a perturbed value by 0.8 or 1.2 (``perturbation_factors``),
where schedy's ``Perturb(0.8, 1.2)`` draws a factor uniformly in [0.8, 1.2);
Ray does not clip, so a ``custom_explore_fn`` clips h to [0, 1] as schedy's
``Perturb(low=0.0, high=1.0)`` does. Every trial gets ``num_cpus / trials``
CPUs so that the whole population trains at once, as in schedy's runs.

Ray's scheduling depends on process timing, so its runs are not exactly
reproducible even with the seeds set here (``random``/``numpy`` for the
scheduler, ``BasicVariantGenerator(random_state=seed)`` for initial configs).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before ray.tune is imported: no per-trial CSV/JSON/TensorBoard files (speed).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import numpy as np
import ray
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator

_EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

import toy_pbt  # noqa: E402  (examples/toy_pbt.py)
from toy_pbt import q_true, train_steps  # noqa: E402

# Ray workers do not see this folder nor examples/ on their sys.path: ship the
# trainable and the toy's math to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call, unused-ignore]
ray.cloudpickle.register_pickle_by_value(toy_pbt)  # type: ignore[no-untyped-call, unused-ignore]

Config = dict[str, Any]
START_THETA = (0.9, 0.9)
NUM_CPUS = 2


@dataclass
class RayToyResult:
    """What one Ray Tune PBT run reached."""

    best_q: float
    final_q: dict[str, float]
    perturbations: int
    seconds: float


class _Recorder(tune.Callback):  # type: ignore[misc, unused-ignore]
    """Keeps every trial's best and latest Q on the driver (no result files needed)."""

    def __init__(self) -> None:
        self.best_q = float("-inf")
        self.final_q: dict[str, float] = {}

    def on_trial_result(  # type: ignore[override, unused-ignore]
        self, iteration: int, trials: list[Any], trial: Any, result: Mapping[str, Any], **info: Any
    ) -> None:
        q = float(result["Q"])
        self.best_q = max(self.best_q, q)
        self.final_q[str(trial.trial_id)] = q


def start(num_cpus: int = NUM_CPUS) -> None:
    """Start a local Ray once per process (idempotent), quietly."""
    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


def stop() -> None:
    if ray.is_initialized():
        ray.shutdown()


def _load_state(checkpoint: tune.Checkpoint | None) -> tuple[list[float], int]:
    if checkpoint is None:
        return list(START_THETA), 0
    with checkpoint.as_directory() as folder:
        state = json.loads(Path(folder, "state.json").read_text())
    return [float(t) for t in state["theta"]], int(state["step"])


def toy_trainable(config: Config) -> None:
    """One trial: resume θ (and its step count) from the checkpoint, climb Q̂.

    It reports Q with a checkpoint of θ every ``interval`` gradient steps: Ray's
    PBT only acts on results ``perturbation_interval`` steps apart, so reports
    in between would change nothing but the run time.
    """
    theta, step = _load_state(tune.get_checkpoint())
    h = [float(config["h0"]), float(config["h1"])]
    steps, interval = int(config["steps"]), int(config["interval"])
    while step < steps:
        todo = min(interval - step % interval, steps - step)
        theta = train_steps(theta, h, todo)
        step += todo
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"theta": theta, "step": step}))
            metrics = {"Q": q_true(theta), "step": step}
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _clip_unit(config: Config) -> Config:
    """Clip the explored h to [0, 1], as schedy's Perturb(low=0.0, high=1.0) does."""
    for key in ("h0", "h1"):
        config[key] = min(1.0, max(0.0, float(config[key])))
    return config


def _scheduler(interval: int) -> PopulationBasedTraining:
    mutations: dict[str, Any] = {"h0": tune.uniform(0.0, 1.0), "h1": tune.uniform(0.0, 1.0)}
    return PopulationBasedTraining(
        time_attr="step",
        metric="Q",
        mode="max",
        perturbation_interval=interval,
        hyperparam_mutations=mutations,
        quantile_fraction=0.25,
        resample_probability=0.25,
        custom_explore_fn=_clip_unit,
    )


def run_toy_pbt(
    seed: int,
    population: int,
    steps: int,
    interval: int,
    storage: str,
    initial: Sequence[Mapping[str, float]] = (),
) -> RayToyResult:
    """One Ray Tune PBT run of ``population`` trials, ``steps`` gradient steps behind each.

    ``initial`` fixes the first configurations (the rest draw h uniformly in [0, 1]²).
    """
    start()
    random.seed(seed)  # Ray's PBT explores with the global `random` and numpy RNGs
    np.random.seed(seed)
    constants = {"steps": steps, "interval": interval}
    space: Config = {"h0": tune.uniform(0.0, 1.0), "h1": tune.uniform(0.0, 1.0), **constants}
    points = [{**dict(point), **constants} for point in initial]
    recorder = _Recorder()
    scheduler = _scheduler(interval)
    trainable: Callable[..., Any] = tune.with_resources(
        toy_trainable, {"cpu": NUM_CPUS / population}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=seed),
            num_samples=population,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"toy-{seed}", storage_path=storage, verbose=0, callbacks=[recorder]
        ),
    )
    began = time.perf_counter()
    tuner.fit()
    return RayToyResult(
        best_q=recorder.best_q,
        final_q=dict(recorder.final_q),
        perturbations=int(scheduler._num_perturbations),
        seconds=time.perf_counter() - began,
    )
