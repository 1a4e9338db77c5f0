"""schedy.pbt: the pure exploit/explore strategies, without any store."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

import pytest

from schedy import pbt
from schedy.pbt import (
    _EXPLORE_STRATEGIES,
    MAXIMIZE,
    MINIMIZE,
    ExploreStrategy,
    Perturb,
    Resample,
    Shift,
    Truncate,
    _exploit_from_json,
    _explore_from_json,
)
from schedy.random import (
    Choice,
    Constant,
    Distribution,
    IntLogUniform,
    IntUniform,
    LogNormal,
    LogUniform,
    Normal,
    Uniform,
)

DRAWS = 300


def test_public_names() -> None:
    assert (MINIMIZE, MAXIMIZE) == ("min", "max")
    assert sorted(pbt.__all__) == [
        "ExploreStrategy",
        "MAXIMIZE",
        "MINIMIZE",
        "Perturb",
        "Resample",
        "Shift",
        "Truncate",
    ]
    assert {"perturb": Perturb, "resample": Resample, "shift": Shift} == _EXPLORE_STRATEGIES


# -- Truncate ------------------------------------------------------------------

CUTOFFS = {
    # n:       0  1  2  3  4  5  10  20
    0.2: [0, 0, 1, 1, 1, 1, 2, 4],
    0.25: [0, 0, 1, 1, 1, 1, 2, 5],
    0.5: [0, 0, 1, 1, 2, 2, 5, 10],
}


@pytest.mark.parametrize(
    ("proportion", "n", "cutoff"),
    [
        (proportion, n, cutoff)
        for proportion, cutoffs in CUTOFFS.items()
        for n, cutoff in zip([0, 1, 2, 3, 4, 5, 10, 20], cutoffs)
    ]
    + [(0.3, 10, 3), (0.1, 30, 3), (0.2, 7, 1)],  # products that float rounds just below
)
def test_truncate_cutoff(proportion: float, n: int, cutoff: int) -> None:
    assert Truncate(proportion)._cutoff(n) == cutoff
    assert cutoff <= n // 2


@pytest.mark.parametrize(
    ("proportion", "error", "match"),
    [
        (0.9, ValueError, r"at most 0.5, otherwise the bottom and top 90% .* would overlap"),
        (0.51, ValueError, r"would overlap"),
        (0, ValueError, r"proportion must be > 0"),
        (-1, ValueError, r"proportion must be > 0"),
        (float("nan"), ValueError, r"Truncate proportion must be a finite number"),
        (True, TypeError, r"Truncate proportion must be a number, not True"),
        ("0.2", TypeError, r"Truncate proportion must be a number"),
    ],
)
def test_truncate_rejects_bad_proportions(
    proportion: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Truncate(proportion)


def test_truncate_json() -> None:
    assert Truncate().proportion == 0.2
    assert Truncate()._to_json() == {"truncate": 0.2}
    assert Truncate(0.5)._to_json() == {"truncate": 0.5}
    assert _exploit_from_json({"truncate": 0.25}) == Truncate(0.25)
    assert _exploit_from_json(json.loads(json.dumps(Truncate()._to_json()))) == Truncate()
    assert Truncate(0.2) != Truncate(0.25)
    assert repr(Truncate()) == "Truncate(proportion=0.2)"


@pytest.mark.parametrize(
    ("obj", "error", "match"),
    [
        ({"truncate": 0.9}, ValueError, r"would overlap"),
        ({"truncate": "0.2"}, TypeError, r"truncate expects a number in \(0, 0.5\]"),
        ({"truncate": {"proportion": 0.2}}, TypeError, r"truncate expects a number"),
        ({"tournament": 2}, ValueError, r"unknown exploit strategy 'tournament'.*truncate"),
        ({}, ValueError, r"with one name"),
        (0.2, ValueError, r'e.g. \{"truncate": 0.2\}; got 0.2'),
    ],
)
def test_exploit_from_bad_json(obj: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _exploit_from_json(obj)


# -- Perturb -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "value", "low", "high"),
    [
        (Perturb(), 10.0, 8.0, 12.0),
        (Perturb(0.5, 2.0), 1e-3, 0.5e-3, 2e-3),
        (Perturb(), -10.0, -12.0, -8.0),
        (Perturb(1.0, 1.0), 3.5, 3.5, 3.5),
        (Perturb(), 100, 80, 120),
    ],
    ids=repr,
)
def test_perturb_multiplies_by_a_factor_in_range(
    strategy: Perturb, value: float, low: float, high: float
) -> None:
    rng = random.Random(5)
    draws = [strategy.explore(value, rng) for _ in range(DRAWS)]
    assert all(type(new) is type(value) for new in draws)
    assert all(low <= new <= high for new in draws)
    if low < high:
        assert len(set(draws)) > 1


@pytest.mark.parametrize(
    ("strategy", "value", "expected"),
    [
        # Ints stay ints and always move by at least 1, in the factor's direction.
        (Perturb(1.01, 1.2), 2, {3}),
        (Perturb(0.8, 0.99), 2, {1}),
        (Perturb(1.01, 1.2), 1, {2}),
        (Perturb(0.8, 0.99), 1, {0}),
        (Perturb(1.01, 1.2), -2, {-3}),
        (Perturb(0.8, 0.99), -2, {-1}),
        (Perturb(), 2, {1, 3}),
        (Perturb(1.0, 1.0), 7, {7}),
        # A multiplication never leaves 0.
        (Perturb(), 0, {0}),
        (Perturb(), 0.0, {0.0}),
        # Clipping to the bounds; an int is clipped to the ints inside them.
        (Perturb(1.5, 2.0, high=1.0), 0.99, {1.0}),
        (Perturb(0.1, 0.5, low=0.5), 0.99, {0.5}),
        (Perturb(0.8, 0.99, low=0.5), 1, {1}),
        (Perturb(1.5, 2.0, low=0, high=10.5), 9, {10}),
        (Perturb(0.1, 0.2, low=1), 4, {1}),
        (Perturb(low=5, high=5), 100.0, {5.0}),
    ],
    ids=repr,
)
def test_perturb_outcomes(strategy: Perturb, value: float, expected: set[float]) -> None:
    rng = random.Random(11)
    draws = {strategy.explore(value, rng) for _ in range(DRAWS)}
    assert draws == expected
    assert all(type(new) is type(next(iter(expected))) for new in draws)


def test_perturb_resampling_leaves_zero() -> None:
    always = Perturb(resample_probability=1.0, distribution=Uniform(1, 2))
    rng = random.Random(2)
    assert all(1 <= always.explore(0.0, rng) < 2 for _ in range(DRAWS))
    sometimes = Perturb(resample_probability=0.25, distribution=IntUniform(5, 9))
    counts = Counter(sometimes.explore(0, rng) != 0 for _ in range(2000))
    assert counts[True] / 2000 == pytest.approx(0.25, abs=0.04)


def test_perturb_clips_resampled_values() -> None:
    strategy = Perturb(high=1.0, resample_probability=1.0, distribution=Uniform(5, 6))
    assert strategy.explore(0.5, random.Random(0)) == 1.0


def test_perturb_does_not_mutate_and_is_reproducible() -> None:
    value = 0.1
    first = Perturb().explore(value, random.Random(9))
    assert first == Perturb().explore(value, random.Random(9))
    assert value == 0.1


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("relu", TypeError, r"Perturb cannot explore 'relu' \(str\): it multiplies numbers"),
        (True, TypeError, r"Perturb cannot explore True \(bool\)"),
        (None, TypeError, r"Perturb cannot explore None"),
        ([1.0], TypeError, r"Perturb cannot explore \[1.0\]"),
    ],
)
def test_perturb_rejects_non_numbers(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Perturb().explore(value, random.Random(0))


def test_perturb_int_clip_without_integers_fails() -> None:
    with pytest.raises(ValueError, match=r"holds no integer between low and high"):
        Perturb(low=0.2, high=0.8).explore(1, random.Random(0))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Perturb(0, 1.2), ValueError, r"need 0 < min_factor <= max_factor"),
        (lambda: Perturb(-1, 1.2), ValueError, r"0 < min_factor"),
        (lambda: Perturb(1.2, 0.8), ValueError, r"min_factor <= max_factor"),
        (lambda: Perturb(float("nan"), 1.2), ValueError, r"min_factor must be a finite"),
        (lambda: Perturb("0.8", 1.2), TypeError, r"Perturb min_factor must be a number"),
        (lambda: Perturb(low=2, high=1), ValueError, r"low must be <= high"),
        (lambda: Perturb(low="0"), TypeError, r"Perturb low must be a number"),
        (lambda: Perturb(resample_probability=1.5), ValueError, r"must be in \[0, 1\]"),
        (lambda: Perturb(resample_probability=0.5), ValueError, r"needs a distribution"),
        (
            lambda: Perturb(distribution=Uniform(0, 1)),
            ValueError,
            r"only used with resample_probability > 0",
        ),
        (
            lambda: Perturb(resample_probability=0.5, distribution=[0, 1]),
            TypeError,
            r"must be a schedy.random distribution",
        ),
        (
            lambda: Perturb(resample_probability=0.5, distribution=Choice(["a", "b"])),
            ValueError,
            r"must draw numbers",
        ),
    ],
)
def test_perturb_rejects_bad_arguments(build: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


# -- Resample ------------------------------------------------------------------


def test_resample_with_probability_one_always_draws() -> None:
    strategy = Resample(Choice(["sgd", "adam"]))
    rng = random.Random(4)
    assert {strategy.explore("rmsprop", rng) for _ in range(DRAWS)} == {"sgd", "adam"}


def test_resample_keeps_the_value_otherwise() -> None:
    strategy = Resample(Constant("new"), probability=0.3)
    rng = random.Random(4)
    counts = Counter(strategy.explore("old", rng) for _ in range(2000))
    assert counts["new"] / 2000 == pytest.approx(0.3, abs=0.04)
    assert set(counts) == {"new", "old"}


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Resample(Uniform(0, 1), 0), ValueError, r"probability must be in \(0, 1\]"),
        (lambda: Resample(Uniform(0, 1), 1.5), ValueError, r"probability must be in \(0, 1\]"),
        (lambda: Resample(Uniform(0, 1), None), TypeError, r"probability must be a number"),
        (lambda: Resample(["sgd", "adam"]), TypeError, r"Resample needs a schedy.random"),
    ],
)
def test_resample_rejects_bad_arguments(build: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


# -- Shift ---------------------------------------------------------------------

SIZES = [16, 32, 64, 128]


@pytest.mark.parametrize(
    ("strategy", "value", "reached"),
    [
        (Shift(SIZES), 32, {16, 64}),
        (Shift(SIZES), 16, {32}),
        (Shift(SIZES), 128, {64}),
        (Shift(SIZES, max_step=2), 16, {32, 64}),
        (Shift(SIZES, max_step=2), 64, {16, 32, 128}),
        (Shift(SIZES, max_step=10), 16, {32, 64, 128}),
        (Shift(["small", "medium", "large"]), "medium", {"small", "large"}),
        (Shift(["small", "medium", "large"]), "large", {"medium"}),
        (Shift(["only"]), "only", {"only"}),
        (Shift([0, 1, True]), True, {1}),
        (Shift([1.0, 2.0]), 1, {2.0}),
        (Shift(Choice(SIZES)), 128, {64}),
    ],
    ids=lambda value: repr(sorted(value, key=repr) if isinstance(value, set) else value),
)
def test_shift_moves_to_a_neighbour(strategy: Shift, value: Any, reached: set[Any]) -> None:
    rng = random.Random(8)
    assert {strategy.explore(value, rng) for _ in range(DRAWS)} == reached


def test_shift_hands_out_copies() -> None:
    strategy = Shift([[1], [2]])
    moved = strategy.explore([1], random.Random(0))
    moved.append(3)
    assert strategy.values == [[1], [2]]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (48, r"Shift cannot explore 48: it is not one of its values \[16, 32, 64, 128\]"),
        ("32", r"Shift cannot explore '32'"),
        (True, r"Shift cannot explore True"),
    ],
)
def test_shift_rejects_unknown_values(value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Shift(SIZES).explore(value, random.Random(0))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Shift([]), ValueError, r"Shift values must not be empty"),
        (lambda: Shift([16, 32, 16]), ValueError, r"Shift values list 16 twice"),
        (lambda: Shift("abc"), TypeError, r"Shift values must be the ordered list"),
        (lambda: Shift(16), TypeError, r"Shift values must be the ordered list"),
        (lambda: Shift([object()]), TypeError, r"Shift values\[0\] = <object"),
        (lambda: Shift(SIZES, max_step=0), ValueError, r"max_step must be >= 1"),
        (lambda: Shift(SIZES, max_step=1.5), TypeError, r"Shift max_step must be an int"),
    ],
)
def test_shift_rejects_bad_arguments(build: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


# -- checks against the initial distribution -----------------------------------


@pytest.mark.parametrize(
    ("strategy", "dist", "match"),
    [
        (Perturb(), None, None),
        (Perturb(), Uniform(0, 1), None),
        (Perturb(), LogUniform(1e-6, 1e-1), None),
        (Perturb(), Normal(0, 1), None),
        (Perturb(), LogNormal(0, 1), None),
        (Perturb(), IntUniform(1, 9), None),
        (Perturb(), IntLogUniform(1, 9), None),
        (Perturb(), Choice(range(1, 10)), None),
        (Perturb(), Choice([0.1, 1]), None),
        (Perturb(), Constant(0.5), None),
        (Perturb(), Choice(["relu", "tanh"]), r"explore\['x'\] = Perturb.*multiplies numbers"),
        (Perturb(), Choice([1, True]), r"draws other values; use schedy.pbt.Shift"),
        (Perturb(), Constant("adam"), r"multiplies numbers"),
        (Perturb(low=0.2, high=0.8), IntUniform(0, 1), r"holds no integer between low and high"),
        (Perturb(low=0.2, high=0.8), Uniform(0, 1), None),
        (Resample(Uniform(0, 1)), Choice(["a"]), None),
        (Resample(Uniform(0, 1)), None, None),
        (Shift(SIZES), None, None),
        (Shift(SIZES), Choice(SIZES), None),
        (Shift(SIZES), Choice([32, 64]), None),
        (Shift(SIZES), Constant(64), None),
        (Shift(SIZES), Choice([16, 48]), r"cannot move from 48, which initial_distributions"),
        (Shift(SIZES), Constant(True), r"cannot move from True"),
        (Shift([1, 2, 3]), IntUniform(1, 3), None),
        (Shift([1, 2, 3]), IntUniform(0, 3), r"cannot move from 0"),
        (Shift([1, 2, 3]), IntUniform(1, 10**12), r"cannot move from 4"),
        (Shift(SIZES), Uniform(16, 128), r"draws continuous numbers; use Choice"),
        (Shift(SIZES), Normal(0, 1), r"moves between listed values"),
    ],
    ids=repr,
)
def test_check_distribution(
    strategy: ExploreStrategy, dist: Distribution | None, match: str | None
) -> None:
    if match is None:
        strategy._check_distribution(dist, "x")
    else:
        with pytest.raises(ValueError, match=match):
            strategy._check_distribution(dist, "x")


# -- JSON ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Perturb(), {"perturb": {"minFactor": 0.8, "maxFactor": 1.2}}),
        (
            Perturb(0.5, 2, low=0, high=1, resample_probability=0.25, distribution=Uniform(0, 1)),
            {
                "perturb": {
                    "minFactor": 0.5,
                    "maxFactor": 2.0,
                    "low": 0.0,
                    "high": 1.0,
                    "resampleProbability": 0.25,
                    "distribution": {"uniform": {"low": 0.0, "high": 1.0}},
                }
            },
        ),
        (Perturb(high=10), {"perturb": {"minFactor": 0.8, "maxFactor": 1.2, "high": 10.0}}),
        (
            Resample(Choice(["sgd", "adam"]), 0.5),
            {
                "resample": {
                    "distribution": {"choice": {"values": ["sgd", "adam"]}},
                    "probability": 0.5,
                }
            },
        ),
        (Shift(SIZES), {"shift": {"values": SIZES, "maxStep": 1}}),
        (Shift(["a", "b"], max_step=2), {"shift": {"values": ["a", "b"], "maxStep": 2}}),
    ],
    ids=repr,
)
def test_explore_json(strategy: ExploreStrategy, expected: dict[str, Any]) -> None:
    assert strategy._to_json() == expected
    assert _explore_from_json(strategy._to_json()) == strategy
    assert _explore_from_json(json.loads(json.dumps(strategy._to_json()))) == strategy


def test_original_client_perturb_json_and_defaults() -> None:
    original = {"perturb": {"minFactor": 0.9, "maxFactor": 1.1}}
    assert _explore_from_json(original) == Perturb(0.9, 1.1)
    assert _explore_from_json({"resample": {"distribution": {"const": 1}}}) == Resample(Constant(1))
    assert _explore_from_json({"shift": {"values": [1, 2]}}) == Shift([1, 2])


@pytest.mark.parametrize(
    ("obj", "error", "match"),
    [
        ({"perturb": {"minFactor": 0.8, "maxFactor": 1.2, "lo": 0}}, ValueError, r"got \{"),
        ({"perturb": 0.8}, TypeError, r"perturb expects .* got 0.8"),
        ({"perturb": {"minFactor": 2, "maxFactor": 1}}, ValueError, r"min_factor <= max_factor"),
        (
            {"perturb": {"minFactor": 1, "maxFactor": 1, "distribution": {"nope": 1}}},
            ValueError,
            r"unknown distribution 'nope'",
        ),
        ({"resample": {"probability": 0.5}}, ValueError, r'resample expects \{"distribution"'),
        ({"resample": {"distribution": {"const": 1}, "probability": 0}}, ValueError, r"\(0, 1\]"),
        ({"shift": {"values": [1], "max_step": 2}}, ValueError, r'shift expects \{"values"'),
        ({"shift": [1, 2]}, TypeError, r"shift expects"),
        ({"mutate": {}}, ValueError, r"unknown explore strategy 'mutate'.*perturb, resample"),
        ({"perturb": {}, "shift": {}}, ValueError, r"with one name"),
        ("perturb", ValueError, r'with one name .* got "perturb"'),
    ],
)
def test_explore_from_bad_json(obj: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _explore_from_json(obj)


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        (Perturb(), Perturb(0.8, 1.2), True),
        (Perturb(), Perturb(high=1), False),
        (Perturb(), Resample(Uniform(0.8, 1.2)), False),
        (Resample(Choice([1, 2])), Resample(Choice([1, 2]), 1), True),
        (Resample(Choice([1])), Resample(Choice([True])), False),
        (Shift(SIZES), Shift(Choice(SIZES)), True),
        (Shift(SIZES), Shift(SIZES, 2), False),
    ],
    ids=repr,
)
def test_explore_equality(left: ExploreStrategy, right: ExploreStrategy, equal: bool) -> None:
    assert (left == right) is equal


@pytest.mark.parametrize(
    ("strategy", "text"),
    [
        (Perturb(), "Perturb(min_factor=0.8, max_factor=1.2)"),
        (Perturb(low=0, high=1), "Perturb(min_factor=0.8, max_factor=1.2, low=0.0, high=1.0)"),
        (
            Perturb(resample_probability=0.5, distribution=Uniform(0, 1)),
            "Perturb(min_factor=0.8, max_factor=1.2, resample_probability=0.5, "
            "distribution=Uniform(low=0.0, high=1.0))",
        ),
        (Resample(Constant(1)), "Resample(distribution=Constant(value=1), probability=1.0)"),
        (Shift([1, 2]), "Shift(values=[1, 2], max_step=1)"),
    ],
)
def test_explore_repr(strategy: ExploreStrategy, text: str) -> None:
    assert repr(strategy) == text


def test_numpy_scalars_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    assert Truncate(np.float64(0.25)) == Truncate(0.25)
    assert Truncate(np.float32(0.5))._cutoff(np.int64(4)) == 2
    strategy = Perturb(np.float64(0.8), np.float32(1.25), low=np.int64(0), high=np.float64(100))
    assert strategy == Perturb(0.8, 1.25, low=0, high=100)
    explored_float = strategy.explore(np.float64(10.0), rng)
    assert type(explored_float) is float and 8 <= explored_float <= 12.5
    explored_int = strategy.explore(np.int64(10), rng)
    assert type(explored_int) is int and 8 <= explored_int <= 13
    assert Resample(Uniform(0, 1), np.float64(0.5)).probability == 0.5
    shift = Shift(np.array(SIZES), max_step=np.int64(1))
    assert shift == Shift(SIZES)
    assert shift.explore(np.int64(16), rng) == 32
    with pytest.raises(TypeError, match=r"Perturb cannot explore"):
        strategy.explore(np.bool_(True), rng)


def test_strategies_yield_finite_values_for_finite_inputs() -> None:
    rng = random.Random(1)
    strategy = Perturb(0.5, 2.0, low=1e-8, high=1.0)
    value = 1e-3
    for _ in range(DRAWS):
        value = strategy.explore(value, rng)
        assert math.isfinite(value) and 1e-8 <= value <= 1.0


@pytest.mark.parametrize(
    ("params", "expected"),
    [({}, Perturb()), ({"minFactor": 0.5}, Perturb(0.5, 1.2)), ({"maxFactor": 2}, Perturb(0.8, 2))],
)
def test_perturb_json_defaults(params: dict[str, float], expected: Perturb) -> None:
    assert _explore_from_json({"perturb": params}) == expected
