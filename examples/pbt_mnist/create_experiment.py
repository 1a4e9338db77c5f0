"""Create the 'MNIST with PBT' experiment (the seed's, from schedy's user guide).

    python examples/pbt_mnist/create_experiment.py [--db URL] [--population 20]

Workers (``lightning_worker.py``, ``keras_worker.py``, ``torch_worker.py``)
then train it; ``run.py`` does both and launches local workers.
"""

from __future__ import annotations

import argparse
import contextlib

import schedy
from schedy.errors import NotFoundError

NAME = "MNIST with PBT"


def make_experiment(
    name: str = NAME,
    population: int = 20,
    generations: int | None = None,
    seed: int | None = None,
    max_layers: int = 9,
) -> schedy.PopulationBasedTraining:
    """The seed's experiment; ``max_layers`` caps depth for quick CPU runs."""
    return schedy.PopulationBasedTraining(
        name,
        schedy.pbt.MAXIMIZE,
        "max_accuracy",
        exploit=schedy.pbt.Truncate(),
        explore={
            "learning_rate": schedy.pbt.Perturb(),
            "dropout_rate": schedy.pbt.Perturb(high=0.9),
        },
        initial_distributions={
            "num_layers": schedy.random.Choice(range(1, max_layers + 1)),
            "activations": schedy.random.Choice(["relu", "tanh"]),
            "learning_rate": schedy.random.LogUniform(1e-6, 1e-1),
            "dropout_rate": schedy.random.Uniform(0.0, 0.8),
        },
        population_size=population,
        max_generations=generations,
        seed=seed,
    )


def create(db: schedy.SchedyDB, experiment: schedy.PopulationBasedTraining, replace: bool) -> None:
    if replace:
        with contextlib.suppress(NotFoundError):
            db.get_experiment(experiment.name).delete()
    db.add_experiment(experiment)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--db", default=None, help="store URL (default: $SCHEDY_URL or ./schedy.db)"
    )
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--generations", type=int, default=None, help="jobs behind any model")
    parser.add_argument("--max-layers", type=int, default=9)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--replace", action="store_true", help="delete an existing one first")
    args = parser.parse_args(argv)
    experiment = make_experiment(
        args.name, args.population, args.generations, args.seed, args.max_layers
    )
    create(schedy.SchedyDB(args.db), experiment, args.replace)
    print(f"created {experiment!r}")


if __name__ == "__main__":
    main()
