"""schedy.random: sampling, validation and the JSON round trip of every distribution."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

import pytest

from schedy import random as schedy_random
from schedy.random import (
    _DISTRIBUTION_TYPES,
    Choice,
    Constant,
    Distribution,
    IntLogUniform,
    IntUniform,
    LogNormal,
    LogUniform,
    Normal,
    Uniform,
    _distribution_from_json,
)

DRAWS = 500

# (distribution, exact type of every sample); one of each kind, with edge cases.
DISTRIBUTIONS: list[tuple[Distribution, type]] = [
    (Uniform(0.0, 0.8), float),
    (Uniform(-3, 7), float),
    (LogUniform(1e-6, 1e-1), float),
    (Normal(0, 5), float),
    (LogNormal(math.log(1e-3), 1.0), float),
    (IntUniform(1, 3), int),
    (IntUniform(-5, -5), int),
    (IntLogUniform(1, 1000), int),
    (IntLogUniform(16, 16), int),
    (Choice(range(1, 10)), int),
    (Choice(["relu", "tanh"]), str),
    (Choice([0.5, 1.5], weights=[1, 3]), float),
    (Constant("relu"), str),
    (Constant(0.5), float),
]


def _support(dist: Distribution) -> list[Any] | tuple[float | None, float | None]:
    if isinstance(dist, Choice):
        return dist.values
    if isinstance(dist, Constant):
        return [dist.value]
    return dist._bounds()  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize(("dist", "kind"), DISTRIBUTIONS, ids=repr)
def test_samples_lie_in_the_support_and_have_the_right_type(dist: Distribution, kind: type) -> None:
    rng = random.Random(1234)
    support = _support(dist)
    for _ in range(DRAWS):
        value = dist.sample(rng)
        assert type(value) is kind
        if isinstance(support, list):
            assert value in support
            continue
        low, high = support
        assert low is None or value >= low
        if high is not None:
            # Float ranges are half-open [low, high); int ranges include high.
            assert value <= high if kind is int else value < high


@pytest.mark.parametrize(("dist", "kind"), DISTRIBUTIONS, ids=repr)
def test_same_seed_same_draws_and_no_rng_works(dist: Distribution, kind: type) -> None:
    first = [dist.sample(random.Random(7)) for _ in range(3)]
    second = [dist.sample(random.Random(7)) for _ in range(3)]
    assert first == second
    assert type(dist.sample()) is kind


@pytest.mark.parametrize(
    ("dist", "expected"),
    [
        (IntUniform(1, 3), {1, 2, 3}),
        (IntLogUniform(1, 2), {1, 2}),
        (IntLogUniform(3, 5), {3, 4, 5}),
        (Choice(range(1, 4)), {1, 2, 3}),
    ],
    ids=repr,
)
def test_integer_ranges_include_both_ends(dist: Distribution, expected: set[int]) -> None:
    rng = random.Random(0)
    assert {dist.sample(rng) for _ in range(DRAWS)} == expected


@pytest.mark.parametrize(
    ("dist", "split", "low_share"),
    [
        # Log-uniform: as likely below the geometric mean of the bounds as above.
        (LogUniform(1e-6, 1e-2), 1e-4, 0.5),
        (IntLogUniform(1, 99), 10, math.log(10) / math.log(100)),
        (Uniform(0, 10), 2.5, 0.25),
        (Normal(3, 2), 3, 0.5),
        (LogNormal(0, 1), 1.0, 0.5),
    ],
    ids=repr,
)
def test_shape_of_the_distribution(dist: Distribution, split: float, low_share: float) -> None:
    rng = random.Random(42)
    draws = [dist.sample(rng) for _ in range(4000)]
    share = sum(value < split for value in draws) / len(draws)
    assert share == pytest.approx(low_share, abs=0.04)


def test_choice_weights_are_respected() -> None:
    rng = random.Random(3)
    dist = Choice(["never", "rare", "often"], weights=[0, 1, 3])
    counts = Counter(dist.sample(rng) for _ in range(4000))
    assert counts["never"] == 0
    assert counts["often"] / counts["rare"] == pytest.approx(3, rel=0.15)


def test_choice_accepts_any_iterable() -> None:
    dist = Choice(range(1, 10))
    assert dist.values == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert dist.weights is None
    assert Choice(value for value in "ab").values == ["a", "b"]
    assert Choice((1, (2, 3))).values == [1, [2, 3]]


@pytest.mark.parametrize("dist", [Choice([[1, 2], {"a": 1}]), Constant({"layers": [64, 64]})])
def test_container_samples_are_copies(dist: Distribution) -> None:
    value = dist.sample(random.Random(0))
    original = json.dumps(dist._to_json())
    value.clear()
    assert json.dumps(dist._to_json()) == original


def test_float_ranges_never_return_high() -> None:
    tiny = Uniform(1.0, math.nextafter(1.0, 2.0))
    assert {tiny.sample(random.Random(seed)) for seed in range(50)} == {1.0}
    huge = Uniform(-1e308, 1e308)
    assert all(math.isfinite(huge.sample(random.Random(seed))) for seed in range(50))


@pytest.mark.parametrize(
    ("dist", "expected"),
    [
        (Uniform(1, 2), {"uniform": {"low": 1.0, "high": 2.0}}),
        (LogUniform(1e-6, 0.1), {"loguniform": {"low": 1e-6, "high": 0.1}}),
        (Normal(0, 5), {"normal": {"mean": 0.0, "std": 5.0}}),
        (LogNormal(0, 1), {"lognormal": {"mean": 0.0, "std": 1.0}}),
        (Choice(["relu", "tanh"]), {"choice": {"values": ["relu", "tanh"]}}),
        (Choice([1, 2], [1, 3]), {"choice": {"values": [1, 2], "weights": [1.0, 3.0]}}),
        (Constant("relu"), {"const": "relu"}),
        (Constant({"a": [1, 2]}), {"const": {"a": [1, 2]}}),
        (Constant(None), {"const": None}),
        (IntUniform(1, 9), {"intuniform": {"low": 1, "high": 9}}),
        (IntLogUniform(16, 512), {"intloguniform": {"low": 16, "high": 512}}),
    ],
    ids=repr,
)
def test_json_shape(dist: Distribution, expected: dict[str, Any]) -> None:
    assert dist._to_json() == expected
    assert _distribution_from_json(dist._to_json()) == dist
    assert _distribution_from_json(json.loads(json.dumps(dist._to_json()))) == dist


@pytest.mark.parametrize(("dist", "kind"), DISTRIBUTIONS, ids=repr)
def test_json_round_trip(dist: Distribution, kind: type) -> None:
    assert _distribution_from_json(dist._to_json()) == dist
    assert _distribution_from_json(json.loads(json.dumps(dist._to_json()))) == dist


def test_registry_names_every_distribution() -> None:
    expected = {
        "uniform": Uniform,
        "loguniform": LogUniform,
        "normal": Normal,
        "lognormal": LogNormal,
        "choice": Choice,
        "const": Constant,
        "intuniform": IntUniform,
        "intloguniform": IntLogUniform,
    }
    assert expected == _DISTRIBUTION_TYPES
    assert sorted(schedy_random.__all__) == sorted(
        [cls.__name__ for cls in _DISTRIBUTION_TYPES.values()] + ["Distribution"]
    )


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        (Uniform(0, 1), Uniform(0.0, 1.0), True),
        (Uniform(0, 1), LogUniform(0.5, 1), False),
        (Uniform(0, 1), Uniform(0, 2), False),
        (Normal(0, 1), LogNormal(0, 1), False),
        (Choice([1, 2]), Choice(range(1, 3)), True),
        (Choice([1]), Choice([True]), False),
        (Choice([1]), Choice([1.0]), False),
        (Choice([1, 2]), Choice([1, 2], [1, 1]), False),
        (Constant(float("nan")), Constant(float("nan")), True),
        (Constant(1), Uniform(0, 1), False),
    ],
    ids=repr,
)
def test_equality(left: Distribution, right: Distribution, equal: bool) -> None:
    assert (left == right) is equal
    assert (left != right) is not equal


def test_distributions_are_abstract_and_unhashable() -> None:
    with pytest.raises(TypeError):
        Distribution()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="unhashable"):
        hash(Uniform(0, 1))


@pytest.mark.parametrize(
    ("dist", "text"),
    [
        (Uniform(0, 1), "Uniform(low=0.0, high=1.0)"),
        (IntUniform(1, 9), "IntUniform(low=1, high=9)"),
        (Normal(0, 2), "Normal(mean=0.0, std=2.0)"),
        (Choice(["a", "b"]), "Choice(values=['a', 'b'])"),
        (Choice(["a", "b"], [1, 2]), "Choice(values=['a', 'b'], weights=[1.0, 2.0])"),
        (Constant("relu"), "Constant(value='relu')"),
    ],
)
def test_repr(dist: Distribution, text: str) -> None:
    assert repr(dist) == text


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Uniform(2, 1), ValueError, r"low must be less than high"),
        (lambda: Uniform(1, 1), ValueError, r"for a fixed value use Constant"),
        (lambda: Uniform(float("nan"), 1), ValueError, r"Uniform low must be a finite number"),
        (lambda: Uniform(0, float("inf")), ValueError, r"Uniform high must be a finite number"),
        (lambda: Uniform(True, 2), TypeError, r"Uniform low must be a number, not True"),
        (lambda: Uniform("0", 1), TypeError, r"Uniform low must be a number, not '0'"),
        (lambda: Uniform(None, 1), TypeError, r"Uniform low must be a number"),
        (lambda: LogUniform(0, 1), ValueError, r"LogUniform.*low must be > 0"),
        (lambda: LogUniform(-1, 1), ValueError, r"low must be > 0"),
        (lambda: LogUniform(1, 0.5), ValueError, r"low must be less than high"),
        (lambda: Normal(0, -1), ValueError, r"Normal.*std must be > 0"),
        (lambda: Normal(0, 0), ValueError, r"std must be > 0"),
        (lambda: Normal(float("nan"), 1), ValueError, r"Normal mean must be a finite"),
        (lambda: LogNormal(0, 0), ValueError, r"LogNormal.*std must be > 0"),
        (lambda: IntUniform(3, 1), ValueError, r"IntUniform.*low must be <= high"),
        (lambda: IntUniform(1.5, 3), TypeError, r"IntUniform low must be an int, not 1.5"),
        (lambda: IntUniform(1, 3.0), TypeError, r"IntUniform high must be an int"),
        (lambda: IntUniform(False, 3), TypeError, r"must be an int, not False"),
        (lambda: IntLogUniform(0, 10), ValueError, r"IntLogUniform.*low must be >= 1"),
        (lambda: IntLogUniform(10, 1), ValueError, r"low must be <= high"),
        (lambda: Choice([]), ValueError, r"Choice values must not be empty"),
        (lambda: Choice(range(0)), ValueError, r"Choice values must not be empty"),
        (lambda: Choice("relu"), TypeError, r"Choice values must be a list"),
        (lambda: Choice({"a": 1}), TypeError, r"Choice values must be a list"),
        (lambda: Choice(3), TypeError, r"Choice values must be a list"),
        (lambda: Choice([1, _Opaque()]), TypeError, r"Choice values\[1\] = <opaque>"),
        (lambda: Choice([1, 2], [1]), ValueError, r"2 values but 1 weights"),
        (lambda: Choice([1, 2], [1, -1]), ValueError, r"weights must be >= 0"),
        (lambda: Choice([1, 2], [0, 0]), ValueError, r"must not all be 0"),
        (lambda: Choice([1, 2], [1, "x"]), TypeError, r"Choice weights\[1\] must be a number"),
        (lambda: Choice([1, 2], [1, float("nan")]), ValueError, r"weights\[1\] must be a finite"),
        (lambda: Choice([1, 2], "ab"), TypeError, r"Choice weights must be a list of numbers"),
        (lambda: Constant(_Opaque()), TypeError, r"Constant value = <opaque>"),
        (lambda: Constant({1: "a"}), TypeError, r"non-string key 1"),
    ],
)
def test_invalid_arguments_raise_at_construction(
    build: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("obj", "error", "match"),
    [
        ({"uniform": {"low": 1}}, ValueError, r'uniform expects \{"low": number, "high": number\}'),
        ({"uniform": {"low": 1, "high": 2, "x": 3}}, ValueError, r'got \{"low": 1, "high": 2'),
        ({"uniform": [1, 2]}, TypeError, r"uniform expects .* got \[1, 2\]"),
        ({"uniform": {"low": "a", "high": 2}}, TypeError, r"Uniform low must be a number"),
        ({"loguniform": {"low": 0, "high": 1}}, ValueError, r"low must be > 0"),
        ({"normal": {"mean": 0}}, ValueError, r'normal expects \{"mean": number'),
        ({"lognormal": {"mu": 0, "sigma": 1}}, ValueError, r"lognormal expects"),
        ({"choice": ["a", "b"]}, TypeError, r'choice expects \{"values"'),
        ({"choice": {"weights": [1]}}, ValueError, r"choice expects"),
        ({"choice": {"values": "ab"}}, TypeError, r"Choice values must be a list"),
        ({"intuniform": {"low": 1.5, "high": 3}}, TypeError, r"IntUniform low must be an int"),
        ({"intloguniform": {"low": 0, "high": 3}}, ValueError, r"low must be >= 1"),
        ({"gaussian": {"mean": 0, "std": 1}}, ValueError, r"unknown distribution 'gaussian'"),
        ({"nope": 1}, ValueError, r"known distributions are choice, const, intloguniform"),
        ({}, ValueError, r"with one name"),
        ({"const": 1, "uniform": {}}, ValueError, r"with one name"),
        ("uniform", ValueError, r'with one name .* got "uniform"'),
    ],
)
def test_bad_json_is_rejected_with_the_expected_shape(
    obj: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _distribution_from_json(obj)


def test_choice_weights_may_be_null_in_json() -> None:
    assert _distribution_from_json({"choice": {"values": [1], "weights": None}}) == Choice([1])


def test_numpy_scalars_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    uniform = Uniform(np.float64(0), np.int64(1))
    assert uniform == Uniform(0, 1)
    assert type(uniform.low) is float
    ints = IntUniform(np.int64(1), np.int32(5))
    assert ints == IntUniform(1, 5)
    assert type(ints.sample(random.Random(0))) is int
    assert IntLogUniform(np.int16(2), np.uint8(8)) == IntLogUniform(2, 8)
    assert Normal(np.float32(0.5), np.float64(2)) == Normal(0.5, 2)
    choice = Choice(np.array([1, 2, 3]), weights=np.array([0.2, 0.3, 0.5]))
    assert choice == Choice([1, 2, 3], [0.2, 0.3, 0.5])
    assert type(choice.sample(random.Random(0))) is int
    assert Constant(np.float64(0.5)) == Constant(0.5)
    with pytest.raises(TypeError, match="must be a number"):
        Uniform(np.bool_(True), 2)
    with pytest.raises(TypeError, match="must be an int"):
        IntUniform(np.float64(1.0), 2)
