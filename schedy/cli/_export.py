"""``schedy export``: an experiment's jobs into TensorBoard or MLflow, one run per member.

Trackers are how people look at training curves; PBT's curves break their
assumptions (parameters that change, models that are replaced).
:mod:`schedy.integrations.trackers` gives them a shape that holds, and this
command replays a finished -- or running -- experiment into one, so a
training loop that logged nothing can still be looked at there. Jobs the
tracker has already are skipped: run it again to catch up.
"""

from __future__ import annotations

import argparse

from ..integrations.trackers import MLflow, TensorBoard, Tracker, export
from ._base import Commands, Store, UsageError

__all__ = ["setup"]


def _export(args: argparse.Namespace, store: Store) -> int:
    if args.tensorboard is None and args.mlflow is None:
        raise UsageError("schedy export needs --tensorboard DIR or --mlflow URI (or both)")
    experiment = store.open().get_experiment(args.experiment)
    trackers: list[Tracker] = []
    try:
        if args.tensorboard is not None:
            trackers.append(TensorBoard(args.tensorboard, step=args.step))
        if args.mlflow is not None:
            trackers.append(
                MLflow(args.mlflow, experiment_name=args.mlflow_experiment, step=args.step)
            )
        for tracker in trackers:
            summary = export(experiment, tracker)
            print(
                f"{experiment.name}: {summary.written} job(s) written to {tracker.destination} "
                f"({summary.runs} run(s); {summary.skipped} already there)"
            )
    except ImportError as error:  # the extra is not installed: say which, in one line
        raise ValueError(str(error)) from None
    finally:
        for tracker in trackers:
            tracker.close()
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy export`` to ``commands``."""
    parser = commands.add_parser(
        "export",
        parents=[common],
        help="replay an experiment's jobs into TensorBoard or MLflow",
        description=(
            "Replay every finished job of an experiment into TensorBoard event files "
            "or an MLflow tracking store: one run per population member, the metrics "
            "per epoch continuing across jobs, the hyperparameters as metrics (hp/NAME), "
            "exploits marked (schedy/exploited_from_member). Jobs already there are "
            "skipped, so running it again catches up with a running experiment."
        ),
    )
    parser.set_defaults(handler=_export)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write TensorBoard event files under DIR (one folder per member); "
        "needs pip install 'schedy[tensorboard]'",
    )
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="log to this MLflow tracking URI (sqlite:///mlflow.db, http://host:5000); "
        "needs pip install 'schedy[mlflow]'",
    )
    parser.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        default=None,
        help="the MLflow experiment (default: the schedy experiment's name)",
    )
    parser.add_argument(
        "--step",
        choices=("epoch", "step"),
        default="epoch",
        help="what the step axis counts along each lineage: epochs (default) or optimizer steps",
    )
