"""JSON values: what hyperparameters and results may hold, and their encoding.

Values are checked and converted *before* anything is written, so that an
unstorable value raises a ``TypeError`` naming its key and leaves the store
untouched. NaN and +/-inf are legal (a diverged run reports ``nan`` loss) and
survive a round trip because every backend stores the JSON text that
:func:`dumps` writes, never a database-native JSON type.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "StrEnum",
    "dumps",
    "loads",
    "normalize",
    "normalize_mapping",
    "storable_part",
]


class StrEnum(str, enum.Enum):
    """An enum whose members are their string values in every respect.

    Unlike a bare ``(str, Enum)`` mix-in, ``str()``, ``format()`` and
    ``hash()`` are the string's, so a member prints as ``DONE``, and finds and
    is found by the plain string in dicts and sets.
    """

    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]
    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return repr(self.value)


#: How deep JSON values may nest: far beyond any real results, and well below
#: Python's recursion limit (a structure that contains itself stops here).
MAX_DEPTH = 64
#: Integers a JSON number can carry to every reader (a double's range).
_MAX_INT_BITS = 1023


class _Unstorable(TypeError):
    """A value with no JSON form, and the path of keys where it sits."""

    def __init__(self, path: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _where(root: str, path: tuple[str | int, ...]) -> str:
    return root + "".join(f"[{key!r}]" for key in path)


def _array_items(value: Any) -> Any:
    """numpy arrays and tensors (any shape) as nested lists, without importing numpy/torch.

    ``None`` when ``value`` is not one.
    """
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            detach = getattr(value, "detach", None)  # a torch tensor that requires grad
            return (detach() if callable(detach) else value).tolist()
        except (TypeError, ValueError, RuntimeError):
            return None
    item = getattr(value, "item", None)
    if callable(item) and tuple(shape) == ():
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _normalize(value: Any, path: tuple[str | int, ...], problems: list[_Unstorable] | None) -> Any:
    """:func:`normalize` with the key path kept as a tuple: the error text is
    only built when a value fails, not for every element of every history list.
    With ``problems``, an unstorable value is recorded there and left out
    (a list item becomes None) instead of raising."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            return _fail(
                path,
                f"= an integer of {value.bit_length()} bits is too large for a JSON number; "
                "store it as a string",
                problems,
            )
        return int(value)
    if isinstance(value, float):
        return float(value)
    if len(path) >= MAX_DEPTH:
        # Fatal to the whole value, even when collecting: a structure cut at
        # some depth would be stored as something else than what it was.
        return _fail(path, f"nests deeper than {MAX_DEPTH} levels (does it contain itself?)", None)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(
                    path,
                    f"has a non-string key {key!r} ({type(key).__name__}); JSON objects need "
                    "string keys: convert it with str()",
                    problems,
                )
                continue
            normalized = _normalize(item, (*path, key), problems)
            if normalized is not _DROPPED:
                out[key] = normalized
        return out
    if isinstance(value, (list, tuple)):
        items = [_normalize(item, (*path, index), problems) for index, item in enumerate(value)]
        return [None if item is _DROPPED else item for item in items]
    array = _array_items(value)
    if array is not None:
        return _normalize(array, path, problems)
    return _fail(
        path,
        f"= {value!r} ({type(value).__module__}.{type(value).__qualname__}) cannot be stored: "
        "use JSON values (numbers, strings, booleans, None, lists and dicts of them, numpy "
        "arrays), e.g. str(p) for a path",
        problems,
    )


_DROPPED = object()


def _fail(path: tuple[str | int, ...], reason: str, problems: list[_Unstorable] | None) -> Any:
    error = _Unstorable(path, reason)
    if problems is None:
        raise error
    problems.append(error)
    return _DROPPED


def normalize(value: Any, where: str) -> Any:
    """Return ``value`` as plain JSON data (dict/list/str/int/float/bool/None).

    ``where`` names the value in errors, e.g. ``"results['loss']"``: a
    ``TypeError`` naming the key path of the first value that cannot be
    stored. Tuples become lists; numpy/torch scalars become Python scalars,
    arrays and tensors nested lists.
    """
    try:
        return _normalize(value, (), None)
    except _Unstorable as error:
        raise TypeError(f"{_where(where, error.path)} {error.reason}.") from None


def normalize_mapping(values: Any, what: str) -> dict[str, Any]:
    """Normalize a ``hyperparameters``/``results`` dict, naming ``what`` in errors."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a dict of JSON values, not {type(values).__name__}.")
    result = normalize(values, what)
    assert isinstance(result, dict)
    return result


def storable_part(values: Any, what: str) -> tuple[dict[str, Any], list[str]]:
    """What of a dict can be stored, and one message per value left out.

    For a job that is ending: the results of a finished training are kept
    even when one value has no JSON form.
    """
    if not isinstance(values, Mapping):
        return {}, [f"{what} must be a dict of JSON values, not {type(values).__name__}"]
    problems: list[_Unstorable] = []
    result: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            problems.append(_Unstorable((), f"has a non-string key {key!r}"))
            continue
        try:
            normalized = _normalize(value, (key,), problems)
        except _Unstorable as error:  # too deep: the whole value is left out
            problems.append(_Unstorable((key,), error.reason))
            continue
        if normalized is not _DROPPED:
            result[key] = normalized
    return result, [f"{_where(what, error.path)} {error.reason}" for error in problems]


def dumps(value: Any) -> str:
    """Encode normalized data; NaN/inf are written as JSON5-style literals."""
    return json.dumps(value, allow_nan=True, separators=(",", ":"))


def canonical(value: Any) -> str:
    """One text per JSON value (keys sorted), for equality and ordering: it
    tells 1, 1.0 and true apart and makes NaN equal to itself."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def storable_text(text: str) -> str:
    """Free text (a traceback) as every database stores it alike: a NUL
    (PostgreSQL refuses it) and a lone surrogate (no UTF-8 form) written as
    their escapes, the rest unchanged."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def loads(text: str) -> Any:
    """Decode text written by :func:`dumps` (accepts ``NaN``/``Infinity``)."""
    return json.loads(text)


def is_number(value: Any) -> bool:
    """True for int/float but not bool (``True`` is an int in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_score(value: Any) -> float | None:
    """Turn a result value into a rankable float; ``None`` for missing or NaN."""
    if not is_number(value):
        return None
    number = float(value)
    return None if math.isnan(number) else number
