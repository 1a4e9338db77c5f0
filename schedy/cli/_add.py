"""``schedy add``: create an experiment from the command line, as the Python API would.

Each scheduler (manual, random, pbt) is a sub-subcommand whose options are
its constructor's arguments, so what a user can configure from a shell is
exactly what the API offers; the distributions and strategies come in the
shared word language of :mod:`._args`.
"""

from __future__ import annotations

import argparse

from ..experiments import Experiment, ManualSearch, PopulationBasedTraining, RandomSearch
from ..pbt import MAXIMIZE, MINIMIZE, Truncate
from ._args import DISTRIBUTION_NAMES, STRATEGY_NAMES, distributions, strategies
from ._base import Commands, Store, UsageError, emit
from ._table import describe_experiment

__all__ = ["setup"]

_DIST_HELP = (
    "hyperparameters as HP DIST PARAMS triples: a name, a distribution among {} and its "
    """parameters as JSON, e.g. x normal '{{"mean": 0, "std": 5}}' lr loguniform """
    """'{{"low": 1e-5, "high": 0.1}}' act choice '{{"values": ["relu", "tanh"]}}' """
    "batch_size const 32"
).format(", ".join(DISTRIBUTION_NAMES))


def _build_manual(args: argparse.Namespace) -> Experiment:
    return ManualSearch(args.experiment, status=args.status)


def _build_random(args: argparse.Namespace) -> Experiment:
    return RandomSearch(
        args.experiment, distributions(args.hyperparameters), status=args.status, seed=args.seed
    )


def _build_pbt(args: argparse.Namespace) -> Experiment:
    initial = distributions(args.hyperparameters)
    if initial and args.population_size is None:
        raise UsageError(
            "initial distributions need --population-size N: how many members to draw from them"
        )
    explore = strategies([word for triple in args.explore for word in triple])
    try:
        exploit = Truncate(args.truncate)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--truncate: {error}") from None
    return PopulationBasedTraining(
        args.experiment,
        args.objective,
        args.result_name,
        exploit=exploit,
        explore=explore,
        initial_distributions=initial,
        population_size=args.population_size,
        status=args.status,
        max_generations=args.max_generations,
        seed=args.seed,
        max_member_crashes=args.max_member_crashes,
    )


def _add(args: argparse.Namespace, store: Store) -> int:
    experiment: Experiment = args.build(args)
    store.open(create=True).add_experiment(experiment)
    emit(describe_experiment(experiment))
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy add`` and its schedulers to ``commands``."""
    parser = commands.add_parser(
        "add",
        parents=[common],
        help="create an experiment",
        description="Create an experiment: a manual queue, a random search or PBT.",
    )
    parser.set_defaults(handler=_add)
    parser.add_argument("experiment", metavar="NAME", help="name of the new experiment")
    parser.add_argument(
        "-s",
        "--status",
        default=Experiment.RUNNING,
        choices=(Experiment.RUNNING, Experiment.DONE),
        help="status of the new experiment (default: RUNNING)",
    )
    schedulers = parser.add_subparsers(
        title="schedulers", dest="scheduler", metavar="SCHEDULER", required=True
    )
    manual = schedulers.add_parser("manual", help="hand out jobs queued by `schedy push`")
    manual.set_defaults(build=_build_manual)

    # takes_triples: triples may also follow options (see _main._parse).
    random_search = schedulers.add_parser("random", help="random search")
    random_search.set_defaults(build=_build_random, takes_triples=True)
    random_search.add_argument(
        "hyperparameters", nargs="+", metavar="HP DIST PARAMS", help=_DIST_HELP
    )
    random_search.add_argument("--seed", type=int, help="make the draws reproducible")

    pbt = schedulers.add_parser(
        "pbt",
        help="Population Based Training",
        description="Population Based Training: the triples are the initial distributions.",
        epilog="""example: schedy add MNIST pbt max accuracy --population-size 20 """
        """--explore learning_rate perturb '{"minFactor": 0.8, "maxFactor": 1.2}' """
        """learning_rate loguniform '{"low": 1e-6, "high": 0.1}' """
        """num_layers choice '{"values": [1, 2, 3]}'""",
    )
    pbt.set_defaults(build=_build_pbt, takes_triples=True)
    pbt.add_argument("objective", choices=(MINIMIZE, MAXIMIZE), help="minimize or maximize")
    pbt.add_argument("result_name", metavar="RESULT_NAME", help="the result members are ranked by")
    pbt.add_argument("hyperparameters", nargs="*", metavar="HP DIST PARAMS", help=_DIST_HELP)
    pbt.add_argument("--population-size", type=int, metavar="N", help="number of members")
    pbt.add_argument(
        "--truncate",
        type=float,
        default=0.2,
        metavar="P",
        help="bottom members (this proportion) copy top ones (default: 0.2)",
    )
    pbt.add_argument("--max-generations", type=int, metavar="N", help="jobs per member")
    pbt.add_argument("--seed", type=int, help="make a single-worker run reproducible")
    pbt.add_argument(
        "--max-member-crashes",
        type=int,
        default=3,
        metavar="N",
        help="crashes in a row after which a member is replaced (default: 3)",
    )
    pbt.add_argument(
        "--explore",
        nargs=3,
        action="append",
        default=[],
        metavar=("HP", "STRATEGY", "PARAMS"),
        help=(
            f"how to vary HP after an exploit: a strategy among "
            f"{', '.join(STRATEGY_NAMES)} and its JSON parameters, e.g. --explore lr "
            """perturb '{"minFactor": 0.8, "maxFactor": 1.2}' (repeatable)"""
        ),
    )
