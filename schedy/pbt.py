"""Population Based Training strategies: who to copy (exploit) and how to vary (explore).

These are pure values: they decide, they never touch a store. The PBT
experiment ranks its members and asks :class:`Truncate` how many form the
bottom and the top; a bottom member copies a top one, whose hyperparameters
then go through each explore strategy::

    schedy.PopulationBasedTraining(
        'MNIST with PBT', schedy.pbt.MAXIMIZE, 'accuracy',
        exploit=schedy.pbt.Truncate(0.2),
        explore={'learning_rate': schedy.pbt.Perturb(low=1e-6, high=1e-1),
                 'batch_size': schedy.pbt.Shift([16, 32, 64, 128]),
                 'optimizer': schedy.pbt.Resample(Choice(['sgd', 'adam']), 0.25)},
        ...)

JSON shapes follow the original Schedy client (``{"truncate": 0.2}``,
``{"perturb": {"minFactor": 0.8, "maxFactor": 1.2}}``) and extend it.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ._values import StrEnum, canonical, is_number, normalize
from .random import (
    Choice,
    Constant,
    Distribution,
    _check_keys,
    _copy_value,
    _distribution_from_json,
    _integer,
    _named_entry,
    _number,
    _NumericDistribution,
    _plain,
    _show,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "MAXIMIZE",
    "MINIMIZE",
    "ExploreStrategy",
    "Perturb",
    "Resample",
    "Shift",
    "Truncate",
]


class Objective(StrEnum):
    """Which way a result ranks: its values are the strings stored and typed on the CLI."""

    #: Minimize the objective (e.g. a loss).
    MINIMIZE = "min"
    #: Maximize the objective (e.g. an accuracy).
    MAXIMIZE = "max"


MINIMIZE = Objective.MINIMIZE
MAXIMIZE = Objective.MAXIMIZE


# -- exploit ------------------------------------------------------------------


class Truncate:
    """Truncation selection: a member in the bottom ``proportion`` copies one in the top.

    ``proportion`` is both the bottom and the top fraction of the ranking, so it
    must be in (0, 0.5]; 0.2 is the PBT paper's choice.
    """

    _EXPLOIT_STRATEGY_NAME: ClassVar[str] = "truncate"

    def __init__(self, proportion: float = 0.2) -> None:
        self.proportion = _number(proportion, "Truncate proportion")
        if not self.proportion > 0:
            raise ValueError(
                f"Truncate(proportion={proportion!r}): proportion must be > 0 (no member "
                "would ever be replaced); use e.g. 0.2 for the bottom and top 20%"
            )
        if not self.proportion <= 0.5:
            raise ValueError(
                f"Truncate(proportion={proportion!r}): proportion must be at most 0.5, "
                f"otherwise the bottom and top {self.proportion:.0%} of the population "
                "would overlap; use e.g. 0.2 for the bottom and top 20%"
            )

    def _cutoff(self, n: int) -> int:
        """How many members form the bottom (and, equally, the top) of a ranking of ``n``.

        At least one as soon as there are two members, so that small populations
        still exploit; never more than ``n // 2``, so bottom and top never overlap.
        """
        if n < 2:
            return 0
        # The epsilon keeps e.g. 10 * 0.3 = 2.9999999999999996 from flooring to 2.
        return max(1, math.floor(n * self.proportion + 1e-9))

    def _params(self) -> float:
        return self.proportion

    @classmethod
    def _from_params(cls, params: Any) -> Self:
        if not is_number(params):
            raise TypeError(
                f"{cls._EXPLOIT_STRATEGY_NAME} expects a number in (0, 0.5], got {_show(params)}"
            )
        return cls(params)

    def _to_json(self) -> dict[str, Any]:
        return {self._EXPLOIT_STRATEGY_NAME: self._params()}

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        assert isinstance(other, Truncate)
        return self.proportion == other.proportion

    def __repr__(self) -> str:
        return f"Truncate(proportion={self.proportion!r})"


#: Every exploit strategy by its JSON name.
_EXPLOIT_STRATEGIES: dict[str, type[Truncate]] = {Truncate._EXPLOIT_STRATEGY_NAME: Truncate}


def _exploit_from_json(obj: Any) -> Truncate:
    """Rebuild an exploit strategy from ``{name: params}`` as written by ``_to_json``."""
    cls, params = _named_entry(
        obj,
        _EXPLOIT_STRATEGIES,
        "an exploit strategy",
        "strategies",
        "{name: params}",
        '{"truncate": 0.2}',
    )
    return cls._from_params(params)


# -- explore ------------------------------------------------------------------


def _numeric_kind(dist: Distribution) -> str | None:
    """'int' or 'float' when every draw of ``dist`` is a number, else None."""
    if isinstance(dist, _NumericDistribution):
        return "int" if dist._is_integer else "float"
    if isinstance(dist, Choice):
        values = dist.values
    elif isinstance(dist, Constant):
        values = [dist.value]
    else:
        return None
    if not all(is_number(value) for value in values):
        return None
    return "int" if all(isinstance(value, int) for value in values) else "float"


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1, as JSON does."""
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


class ExploreStrategy(abc.ABC):
    """How an exploited member's hyperparameter is varied after copying it.

    ``explore`` returns a new value and never mutates its argument; the
    experiment passes its own seeded ``random.Random`` so runs can be replayed.
    """

    _EXPLORE_STRATEGY_NAME: ClassVar[str]

    @abc.abstractmethod
    def explore(self, value: Any, rng: random.Random) -> Any:
        """Return the explored value of ``value`` (raises TypeError/ValueError if unusable)."""

    @abc.abstractmethod
    def _check_distribution(self, dist: Distribution | None, name: str) -> None:
        """Raise ValueError if this strategy cannot work on values drawn from ``dist``.

        Called when the experiment is built, so a mismatch fails before any job
        runs. ``dist`` is None for hyperparameters that come from queued jobs.
        """

    @abc.abstractmethod
    def _params(self) -> Any:
        """The JSON parameters of this strategy."""

    @classmethod
    @abc.abstractmethod
    def _from_params(cls, params: Any) -> Self:
        """Build the strategy from JSON parameters, validating them."""

    def _to_json(self) -> dict[str, Any]:
        return {self._EXPLORE_STRATEGY_NAME: self._params()}

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        assert isinstance(other, ExploreStrategy)
        return canonical(self._to_json()) == canonical(other._to_json())


class Perturb(ExploreStrategy):
    """Multiply a number by a random factor in [``min_factor``, ``max_factor``).

    Ints stay ints (rounded, and moved by at least 1 so that small ints such as
    2 still change); floats stay floats. The result is clipped to [``low``,
    ``high``] when given; use ``low=1`` for an int that must stay positive.

    A multiplication never moves a value away from 0; with
    ``resample_probability`` > 0 the value is instead drawn afresh from
    ``distribution`` that often, which also keeps the search from narrowing.
    """

    _EXPLORE_STRATEGY_NAME = "perturb"
    _PARAMS_SPEC = (
        '{"minFactor": number, "maxFactor": number, "low": number, "high": number, '
        '"resampleProbability": number, "distribution": {name: args}} '
        "(the last four optional)"
    )

    def __init__(
        self,
        min_factor: float = 0.8,
        max_factor: float = 1.2,
        *,
        low: float | None = None,
        high: float | None = None,
        resample_probability: float = 0.0,
        distribution: Distribution | None = None,
    ) -> None:
        self.min_factor = _number(min_factor, "Perturb min_factor")
        self.max_factor = _number(max_factor, "Perturb max_factor")
        if not 0 < self.min_factor <= self.max_factor:
            raise ValueError(
                f"Perturb(min_factor={min_factor!r}, max_factor={max_factor!r}): need "
                "0 < min_factor <= max_factor, e.g. Perturb(0.8, 1.2)"
            )
        self.low = None if low is None else _number(low, "Perturb low")
        self.high = None if high is None else _number(high, "Perturb high")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Perturb(low={low!r}, high={high!r}): low must be <= high; swap them")
        self.resample_probability = _number(resample_probability, "Perturb resample_probability")
        if not 0 <= self.resample_probability <= 1:
            raise ValueError(
                f"Perturb resample_probability must be in [0, 1], not {resample_probability!r}"
            )
        if distribution is not None and not isinstance(distribution, Distribution):
            raise TypeError(
                f"Perturb distribution must be a schedy.random distribution such as "
                f"LogUniform(1e-6, 1e-1), not {distribution!r}"
            )
        if self.resample_probability > 0 and distribution is None:
            raise ValueError(
                f"Perturb(resample_probability={resample_probability!r}) needs a distribution "
                "to resample from, e.g. distribution=LogUniform(1e-6, 1e-1)"
            )
        if self.resample_probability == 0 and distribution is not None:
            raise ValueError(
                f"Perturb(distribution={distribution!r}) is only used with "
                "resample_probability > 0: set e.g. resample_probability=0.25, or drop it"
            )
        if distribution is not None and _numeric_kind(distribution) is None:
            raise ValueError(
                f"Perturb(distribution={distribution!r}) must draw numbers, since Perturb "
                "multiplies them; use Resample for other values"
            )
        self.distribution = distribution

    def explore(self, value: Any, rng: random.Random) -> Any:
        """Return ``value`` times a random factor (or a fresh draw), clipped to the bounds."""
        plain = _plain(value)
        if not is_number(plain):
            raise TypeError(
                f"Perturb cannot explore {value!r} ({type(value).__name__}): it multiplies "
                "numbers; use Shift for ordered choices or Resample for other values"
            )
        if self.distribution is not None and rng.random() < self.resample_probability:
            return self._clip(self.distribution.sample(rng))
        factor = self.min_factor + (self.max_factor - self.min_factor) * rng.random()
        if isinstance(plain, int):
            moved = round(plain * factor)
            if moved == plain and factor != 1 and plain != 0:
                # Rounding swallows small changes: 2 * 1.1 would stay 2 forever.
                grows = (factor > 1) == (plain > 0)
                moved = plain + (1 if grows else -1)
            return self._clip(moved)
        return self._clip(float(plain) * factor)

    def _clip(self, value: Any) -> Any:
        low: float | None
        high: float | None
        if isinstance(value, int) and not isinstance(value, bool):
            low = None if self.low is None else math.ceil(self.low)
            high = None if self.high is None else math.floor(self.high)
            if low is not None and high is not None and low > high:
                raise ValueError(
                    f"{self!r} holds no integer between low and high, so it cannot clip "
                    f"the int {value}; widen the bounds"
                )
        else:
            low, high = self.low, self.high
        if low is not None and value < low:
            value = low
        if high is not None and value > high:
            value = high
        return value

    def _check_distribution(self, dist: Distribution | None, name: str) -> None:
        if dist is None:
            return
        kind = _numeric_kind(dist)
        if kind is None:
            raise ValueError(
                f"explore[{name!r}] = {self!r} multiplies numbers, but initial_distributions"
                f"[{name!r}] = {dist!r} draws other values; use schedy.pbt.Shift(...) for "
                "ordered choices or schedy.pbt.Resample(...)"
            )
        if (
            kind == "int"
            and self.low is not None
            and self.high is not None
            and math.ceil(self.low) > math.floor(self.high)
        ):
            raise ValueError(
                f"explore[{name!r}] = {self!r} holds no integer between low and high, "
                f"but initial_distributions[{name!r}] = {dist!r} draws ints; widen the bounds"
            )

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"minFactor": self.min_factor, "maxFactor": self.max_factor}
        if self.low is not None:
            params["low"] = self.low
        if self.high is not None:
            params["high"] = self.high
        if self.resample_probability:
            params["resampleProbability"] = self.resample_probability
        if self.distribution is not None:
            params["distribution"] = self.distribution._to_json()
        return params

    @classmethod
    def _from_params(cls, params: Any) -> Self:
        checked = _check_keys(
            cls._EXPLORE_STRATEGY_NAME,
            cls._PARAMS_SPEC,
            params,
            (),
            optional=(
                "minFactor",
                "maxFactor",
                "low",
                "high",
                "resampleProbability",
                "distribution",
            ),
        )
        dist = checked.get("distribution")
        return cls(
            checked.get("minFactor", 0.8),
            checked.get("maxFactor", 1.2),
            low=checked.get("low"),
            high=checked.get("high"),
            resample_probability=checked.get("resampleProbability", 0.0),
            distribution=None if dist is None else _distribution_from_json(dist),
        )

    def __repr__(self) -> str:
        fields = [f"min_factor={self.min_factor!r}", f"max_factor={self.max_factor!r}"]
        if self.low is not None:
            fields.append(f"low={self.low!r}")
        if self.high is not None:
            fields.append(f"high={self.high!r}")
        if self.distribution is not None:
            fields.append(f"resample_probability={self.resample_probability!r}")
            fields.append(f"distribution={self.distribution!r}")
        return f"Perturb({', '.join(fields)})"


class Resample(ExploreStrategy):
    """With ``probability``, replace the value by a fresh draw from ``distribution``.

    Works on any value, so it suits categorical hyperparameters that have no
    order (an optimizer name), and keeps the population from converging too soon.
    """

    _EXPLORE_STRATEGY_NAME = "resample"
    _PARAMS_SPEC = '{"distribution": {name: args}, "probability": number (optional)}'

    def __init__(self, distribution: Distribution, probability: float = 1.0) -> None:
        if not isinstance(distribution, Distribution):
            raise TypeError(
                f"Resample needs a schedy.random distribution such as Choice(['sgd', 'adam']), "
                f"not {distribution!r}"
            )
        self.distribution = distribution
        self.probability = _number(probability, "Resample probability")
        if not 0 < self.probability <= 1:
            raise ValueError(
                f"Resample probability must be in (0, 1], not {probability!r} "
                "(with 0 it would never resample: drop the strategy instead)"
            )

    def explore(self, value: Any, rng: random.Random) -> Any:
        """Return a fresh draw with ``probability``, else ``value`` unchanged."""
        if self.probability >= 1 or rng.random() < self.probability:
            return self.distribution.sample(rng)
        return value

    def _check_distribution(self, dist: Distribution | None, name: str) -> None:
        """Any value can be replaced by a draw, so every initial distribution works."""

    def _params(self) -> dict[str, Any]:
        return {"distribution": self.distribution._to_json(), "probability": self.probability}

    @classmethod
    def _from_params(cls, params: Any) -> Self:
        checked = _check_keys(
            cls._EXPLORE_STRATEGY_NAME,
            cls._PARAMS_SPEC,
            params,
            ("distribution",),
            optional=("probability",),
        )
        return cls(
            _distribution_from_json(checked["distribution"]), checked.get("probability", 1.0)
        )

    def __repr__(self) -> str:
        return f"Resample(distribution={self.distribution!r}, probability={self.probability!r})"


class Shift(ExploreStrategy):
    """Move to a neighbouring choice in an ordered list of ``values``.

    For ordered categories such as batch sizes ``[16, 32, 64, 128]`` or
    ``['small', 'medium', 'large']``: the value's position moves by a random
    non-zero step of at most ``max_step``, staying inside the list (so at an end
    the only move is inward). ``values`` may be a ``schedy.random.Choice``.
    """

    _EXPLORE_STRATEGY_NAME = "shift"
    _PARAMS_SPEC = '{"values": [value, ...], "maxStep": int >= 1 (optional)}'

    def __init__(self, values: Iterable[Any] | Choice, max_step: int = 1) -> None:
        if isinstance(values, Choice):
            values = values.values
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
            raise TypeError(
                f"Shift values must be the ordered list of choices, e.g. [16, 32, 64], "
                f"not {values!r}"
            )
        self.values: list[Any] = [
            normalize(value, f"Shift values[{index}]") for index, value in enumerate(values)
        ]
        if not self.values:
            raise ValueError("Shift values must not be empty: give the ordered list of choices")
        for index, value in enumerate(self.values):
            if any(_same(value, earlier) for earlier in self.values[:index]):
                raise ValueError(
                    f"Shift values list {value!r} twice; each choice must appear once "
                    "so that its position is known"
                )
        self.max_step = _integer(max_step, "Shift max_step")
        if self.max_step < 1:
            raise ValueError(f"Shift max_step must be >= 1, not {max_step!r}")

    def _index(self, value: Any) -> int | None:
        plain = _plain(value)
        for index, choice in enumerate(self.values):
            if _same(choice, plain):
                return index
        return None

    def explore(self, value: Any, rng: random.Random) -> Any:
        """Return a neighbour of ``value`` in ``values`` (itself if it is the only value)."""
        index = self._index(value)
        if index is None:
            raise ValueError(
                f"Shift cannot explore {value!r}: it is not one of its values {self.values}; "
                "add it to the list"
            )
        first = max(0, index - self.max_step)
        last = min(len(self.values) - 1, index + self.max_step)
        targets = [target for target in range(first, last + 1) if target != index]
        if not targets:
            return _copy_value(self.values[index])
        return _copy_value(self.values[rng.choice(targets)])

    def _check_distribution(self, dist: Distribution | None, name: str) -> None:
        if dist is None:
            return
        if isinstance(dist, Choice):
            drawn = dist.values
        elif isinstance(dist, Constant):
            drawn = [dist.value]
        elif isinstance(dist, _NumericDistribution) and dist._is_integer:
            low, high = dist._bounds()
            assert low is not None and high is not None
            # One more int than there are values is enough to find a missing one,
            # so a huge range such as IntUniform(0, 10**9) is checked at once.
            drawn = list(range(int(low), int(min(high, low + len(self.values))) + 1))
        else:
            raise ValueError(
                f"explore[{name!r}] = {self!r} moves between listed values, but "
                f"initial_distributions[{name!r}] = {dist!r} draws continuous numbers; "
                f"use Choice({self.values!r}) or Perturb()"
            )
        missing = [value for value in drawn if self._index(value) is None]
        if missing:
            raise ValueError(
                f"explore[{name!r}] = {self!r} cannot move from {missing[0]!r}, which "
                f"initial_distributions[{name!r}] = {dist!r} can draw; add it to Shift's values"
            )

    def _params(self) -> dict[str, Any]:
        return {"values": list(self.values), "maxStep": self.max_step}

    @classmethod
    def _from_params(cls, params: Any) -> Self:
        checked = _check_keys(
            cls._EXPLORE_STRATEGY_NAME,
            cls._PARAMS_SPEC,
            params,
            ("values",),
            optional=("maxStep",),
        )
        return cls(checked["values"], checked.get("maxStep", 1))

    def __repr__(self) -> str:
        return f"Shift(values={self.values!r}, max_step={self.max_step!r})"


#: Every explore strategy by its JSON name.
_EXPLORE_STRATEGIES: dict[str, type[ExploreStrategy]] = {
    cls._EXPLORE_STRATEGY_NAME: cls for cls in (Perturb, Resample, Shift)
}


def _explore_from_json(obj: Any) -> ExploreStrategy:
    """Rebuild an explore strategy from ``{name: params}`` as written by ``_to_json``."""
    cls, params = _named_entry(
        obj,
        _EXPLORE_STRATEGIES,
        "an explore strategy",
        "strategies",
        "{name: params}",
        '{"perturb": {"minFactor": 0.8, "maxFactor": 1.2}}',
    )
    return cls._from_params(params)
