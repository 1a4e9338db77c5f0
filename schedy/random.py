"""Distributions that random search and PBT draw hyperparameters from.

Every distribution validates its arguments when it is built, so a typo fails
at ``schedy.RandomSearch(...)`` rather than in a worker hours later, and
round-trips to the JSON the store (and the ``schedy add`` command) holds::

    {"uniform": {"low": 0.0, "high": 0.8}}
    {"choice": {"values": ["relu", "tanh"], "weights": [3.0, 1.0]}}
    {"const": 0.5}

The JSON names ``uniform``, ``loguniform``, ``normal``, ``choice`` and
``const`` are the original Schedy client's; ``lognormal``, ``intuniform`` and
``intloguniform`` are additions.
"""

from __future__ import annotations

import abc
import copy
import json
import math
import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ._values import canonical, is_number, normalize

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Choice",
    "Constant",
    "Distribution",
    "IntLogUniform",
    "IntUniform",
    "LogNormal",
    "LogUniform",
    "Normal",
    "Uniform",
]


# -- argument checks (shared with schedy.pbt) ---------------------------------


T = TypeVar("T")


def _show(value: Any) -> str:
    """Render user input for an error message, as JSON when possible."""
    try:
        return json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)


def _plain(value: Any) -> Any:
    """Unwrap numpy/torch scalars; leave anything unstorable as it is."""
    try:
        return normalize(value, "value")
    except TypeError:
        return value


def _number(value: Any, what: str) -> float:
    """Check a finite real number (numpy scalars welcome, bools not) and return a float."""
    plain = _plain(value)
    if not is_number(plain):
        raise TypeError(f"{what} must be a number, not {value!r} ({type(value).__name__})")
    number = float(plain)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return number


def _integer(value: Any, what: str) -> int:
    """Check an int (numpy integers welcome, bools and floats not) and return it."""
    plain = _plain(value)
    if not isinstance(plain, int) or isinstance(plain, bool):
        raise TypeError(
            f"{what} must be an int, not {value!r} ({type(value).__name__}); "
            "convert it with int() if that is what you mean"
        )
    return int(plain)


def _copy_value(value: Any) -> Any:
    """Hand out containers as copies, so a job editing its value cannot edit the distribution."""
    return copy.deepcopy(value) if isinstance(value, (list, dict)) else value


def _check_keys(
    name: str, spec: str, args: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """Check that ``args`` is an object with exactly the expected keys."""
    if not isinstance(args, Mapping):
        raise TypeError(f"{name} expects {spec}, got {_show(args)}")
    keys = set(args)
    if not set(required) <= keys or not keys <= set(required) | set(optional):
        raise ValueError(f"{name} expects {spec}, got {_show(args)}")
    return args


# -- distributions ------------------------------------------------------------


class Distribution(abc.ABC):
    """A random variable that hyperparameter values are drawn from.

    Subclasses are plain, comparable values: two distributions are equal when
    they have the same type and the same JSON arguments.
    """

    #: Name of the distribution in JSON and on the command line.
    _FUNC_NAME: ClassVar[str]
    #: What ``_from_args`` accepts, for error messages.
    _ARGS_SPEC: ClassVar[str]

    @abc.abstractmethod
    def sample(self, rng: random.Random | None = None) -> Any:
        """Draw one value using ``rng`` (a fresh ``random.Random()`` if None)."""

    @abc.abstractmethod
    def _args(self) -> Any:
        """The JSON arguments of this distribution."""

    @classmethod
    @abc.abstractmethod
    def _from_args(cls, args: Any) -> Self:
        """Build the distribution from JSON arguments, validating them."""

    def _to_json(self) -> dict[str, Any]:
        return {self._FUNC_NAME: self._args()}

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        assert isinstance(other, Distribution)
        return canonical(self._to_json()) == canonical(other._to_json())

    def __repr__(self) -> str:
        args = self._args()
        fields = ", ".join(f"{key}={value!r}" for key, value in args.items())
        return f"{type(self).__name__}({fields})"


class _NumericDistribution(Distribution):
    """A distribution of numbers, which PBT's Perturb can work on."""

    #: Whether every sample is an int.
    _is_integer: ClassVar[bool] = False

    @abc.abstractmethod
    def _bounds(self) -> tuple[float | None, float | None]:
        """Bounds of the support (None when unbounded), for explore strategies."""


class _Range(_NumericDistribution):
    """A distribution over [``low``, ``high``]: its bounds and JSON are those two."""

    low: float
    high: float

    def _bounds(self) -> tuple[float | None, float | None]:
        return (self.low, self.high)

    def _args(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    @classmethod
    def _from_args(cls, args: Any) -> Self:
        checked = _check_keys(cls._FUNC_NAME, cls._ARGS_SPEC, args, ("low", "high"))
        return cls(checked["low"], checked["high"])  # type: ignore[call-arg]


def _rng(rng: random.Random | None) -> random.Random:
    return random.Random() if rng is None else rng


def _below(value: float, low: float, high: float) -> float:
    """Keep a float draw in [low, high): rounding can land exactly on ``high``."""
    return max(low, min(value, math.nextafter(high, low)))


class Uniform(_Range):
    """Floats uniformly distributed in [``low``, ``high``)."""

    _FUNC_NAME = "uniform"
    _ARGS_SPEC = '{"low": number, "high": number}'

    def __init__(self, low: float, high: float) -> None:
        self.low = _number(low, "Uniform low")
        self.high = _number(high, "Uniform high")
        if not self.low < self.high:
            raise ValueError(
                f"Uniform(low={low!r}, high={high!r}): low must be less than high "
                "(values are drawn from [low, high)); for a fixed value use Constant"
            )

    def sample(self, rng: random.Random | None = None) -> float:
        """Draw a float in [low, high)."""
        u = _rng(rng).random()
        # This form never overflows, even for bounds near the float limits.
        return _below((1.0 - u) * self.low + u * self.high, self.low, self.high)


class LogUniform(_Range):
    """Floats in [``low``, ``high``) whose logarithm is uniform: for scale parameters.

    A learning rate between 1e-6 and 1e-1 is as likely to be below 1e-4 as above.
    """

    _FUNC_NAME = "loguniform"
    _ARGS_SPEC = '{"low": number > 0, "high": number}'

    def __init__(self, low: float, high: float) -> None:
        self.low = _number(low, "LogUniform low")
        self.high = _number(high, "LogUniform high")
        if not self.low > 0:
            raise ValueError(
                f"LogUniform(low={low!r}, high={high!r}): low must be > 0 (the logarithm of "
                "0 or a negative number is undefined); use e.g. low=1e-8, or Uniform"
            )
        if not self.low < self.high:
            raise ValueError(
                f"LogUniform(low={low!r}, high={high!r}): low must be less than high "
                "(values are drawn from [low, high)); for a fixed value use Constant"
            )

    def sample(self, rng: random.Random | None = None) -> float:
        """Draw a float in [low, high), log-uniformly."""
        log_value = _rng(rng).uniform(math.log(self.low), math.log(self.high))
        return _below(math.exp(log_value), self.low, self.high)


class Normal(_NumericDistribution):
    """Normally distributed floats with the given ``mean`` and ``std``."""

    _FUNC_NAME = "normal"
    _ARGS_SPEC = '{"mean": number, "std": number > 0}'

    def __init__(self, mean: float, std: float) -> None:
        name = type(self).__name__
        self.mean = _number(mean, f"{name} mean")
        self.std = _number(std, f"{name} std")
        if not self.std > 0:
            raise ValueError(
                f"{name}(mean={mean!r}, std={std!r}): std must be > 0; "
                "for a fixed value use Constant"
            )

    def sample(self, rng: random.Random | None = None) -> float:
        """Draw a float from N(mean, std)."""
        # normalvariate keeps no hidden cache (unlike gauss), so draws depend on the seed only.
        return float(_rng(rng).normalvariate(self.mean, self.std))

    def _bounds(self) -> tuple[float | None, float | None]:
        return (None, None)

    def _args(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def _from_args(cls, args: Any) -> Self:
        checked = _check_keys(cls._FUNC_NAME, cls._ARGS_SPEC, args, ("mean", "std"))
        return cls(checked["mean"], checked["std"])


class LogNormal(Normal):
    """Positive floats whose logarithm is N(``mean``, ``std``).

    ``mean`` and ``std`` are those of the logarithm, as in
    ``random.lognormvariate``: ``LogNormal(math.log(1e-3), 1.0)`` centres on 1e-3.
    """

    _FUNC_NAME = "lognormal"

    def sample(self, rng: random.Random | None = None) -> float:
        """Draw a float exp(x) with x from N(mean, std)."""
        return float(_rng(rng).lognormvariate(self.mean, self.std))

    def _bounds(self) -> tuple[float | None, float | None]:
        return (0.0, None)


class IntUniform(_Range):
    """Integers uniformly distributed from ``low`` to ``high``, both included."""

    _FUNC_NAME = "intuniform"
    _ARGS_SPEC = '{"low": int, "high": int}'
    _is_integer = True

    low: int
    high: int

    def __init__(self, low: int, high: int) -> None:
        self.low = _integer(low, "IntUniform low")
        self.high = _integer(high, "IntUniform high")
        if not self.low <= self.high:
            raise ValueError(
                f"IntUniform(low={low!r}, high={high!r}): low must be <= high "
                "(both ends are included)"
            )

    def sample(self, rng: random.Random | None = None) -> int:
        """Draw an int in [low, high]."""
        return _rng(rng).randint(self.low, self.high)


class IntLogUniform(_Range):
    """Integers from ``low`` to ``high`` (both included), log-uniformly: for sizes.

    The integer k comes up with probability proportional to log((k + 1) / k),
    so 1..10 is drawn as often as 10..100 (e.g. hidden units, batch sizes).
    """

    _FUNC_NAME = "intloguniform"
    _ARGS_SPEC = '{"low": int >= 1, "high": int}'
    _is_integer = True

    low: int
    high: int

    def __init__(self, low: int, high: int) -> None:
        self.low = _integer(low, "IntLogUniform low")
        self.high = _integer(high, "IntLogUniform high")
        if not self.low >= 1:
            raise ValueError(
                f"IntLogUniform(low={low!r}, high={high!r}): low must be >= 1 (the logarithm "
                "of 0 or a negative number is undefined); use IntUniform for those"
            )
        if not self.low <= self.high:
            raise ValueError(
                f"IntLogUniform(low={low!r}, high={high!r}): low must be <= high "
                "(both ends are included)"
            )

    def sample(self, rng: random.Random | None = None) -> int:
        """Draw an int in [low, high], log-uniformly."""
        log_value = _rng(rng).uniform(math.log(self.low), math.log(self.high + 1))
        return max(self.low, min(self.high, math.floor(math.exp(log_value))))


class Choice(Distribution):
    """One of ``values``, optionally weighted: for categorical hyperparameters.

    ``values`` may be any iterable of JSON values (``range(1, 10)`` works);
    ``weights``, if given, has one non-negative weight per value.
    """

    _FUNC_NAME = "choice"
    _ARGS_SPEC = '{"values": [value, ...], "weights": [number, ...] (optional)}'

    def __init__(self, values: Iterable[Any], weights: Iterable[float] | None = None) -> None:
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
            raise TypeError(
                f"Choice values must be a list of the values to choose from, not {values!r}; "
                f"for a single value use Constant or Choice([value])"
            )
        self.values: list[Any] = [
            normalize(value, f"Choice values[{index}]") for index, value in enumerate(values)
        ]
        if not self.values:
            raise ValueError("Choice values must not be empty: give at least one value")
        self.weights: list[float] | None = None
        if weights is not None:
            if isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Iterable):
                raise TypeError(f"Choice weights must be a list of numbers, not {weights!r}")
            checked = [
                _number(weight, f"Choice weights[{index}]") for index, weight in enumerate(weights)
            ]
            if len(checked) != len(self.values):
                raise ValueError(
                    f"Choice has {len(self.values)} values but {len(checked)} weights: "
                    "give exactly one weight per value"
                )
            if any(weight < 0 for weight in checked):
                raise ValueError(f"Choice weights must be >= 0, got {checked}")
            if not sum(checked) > 0:
                raise ValueError(
                    f"Choice weights must not all be 0 (got {checked}): nothing could be drawn"
                )
            self.weights = checked

    def sample(self, rng: random.Random | None = None) -> Any:
        """Draw one of the values (a copy, if it is a list or dict)."""
        rng = _rng(rng)
        if self.weights is None:
            value = rng.choice(self.values)
        else:
            value = rng.choices(self.values, self.weights)[0]
        return _copy_value(value)

    def _args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"values": list(self.values)}
        if self.weights is not None:
            args["weights"] = list(self.weights)
        return args

    @classmethod
    def _from_args(cls, args: Any) -> Self:
        checked = _check_keys(
            cls._FUNC_NAME, cls._ARGS_SPEC, args, ("values",), optional=("weights",)
        )
        return cls(checked["values"], checked.get("weights"))


class Constant(Distribution):
    """Always the same ``value`` (any JSON value): to fix a hyperparameter."""

    _FUNC_NAME = "const"
    _ARGS_SPEC = "any JSON value"

    def __init__(self, value: Any) -> None:
        self.value = normalize(value, "Constant value")

    def sample(self, rng: random.Random | None = None) -> Any:
        """Return the value (a copy, if it is a list or dict)."""
        return _copy_value(self.value)

    def _args(self) -> Any:
        return self.value

    @classmethod
    def _from_args(cls, args: Any) -> Self:
        return cls(args)

    def __repr__(self) -> str:
        return f"Constant(value={self.value!r})"


#: Every distribution by its JSON name (also the names ``schedy add`` accepts).
_DISTRIBUTION_TYPES: dict[str, type[Distribution]] = {
    cls._FUNC_NAME: cls
    for cls in (
        Uniform,
        LogUniform,
        Normal,
        LogNormal,
        Choice,
        Constant,
        IntUniform,
        IntLogUniform,
    )
}


def _named_entry(
    obj: Any, registry: Mapping[str, T], what: str, kinds: str, shape: str, example: str
) -> tuple[T, Any]:
    """Split ``{name: params}`` and look ``name`` up in ``registry``, with clear errors.

    Shared by distributions and PBT strategies, which are all stored this way.
    """
    known = ", ".join(sorted(registry))
    if not isinstance(obj, Mapping) or len(obj) != 1:
        raise ValueError(
            f"{what} must be written as {shape} with one name ({known}), "
            f"e.g. {example}; got {_show(obj)}"
        )
    ((name, params),) = obj.items()
    found = registry.get(name)
    if found is None:
        raise ValueError(f"unknown {what.split(' ', 1)[1]} {name!r}: known {kinds} are {known}")
    return found, params


def _distribution_from_json(obj: Any) -> Distribution:
    """Rebuild a distribution from ``{name: args}`` as written by ``_to_json``."""
    cls, args = _named_entry(
        obj,
        _DISTRIBUTION_TYPES,
        "a distribution",
        "distributions",
        "{name: arguments}",
        '{"uniform": {"low": 0, "high": 1}}',
    )
    return cls._from_args(args)
