"""One validator per kind of option: integers, real numbers, flags, choices and name lists.

Every public function of the package checks its options with these, so that
the same kind of bad value gets the same error everywhere: numpy scalars are
numbers, booleans are not (``True`` is refused where an integer or a real
number is asked for), and the message names the option and the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "check_bool",
    "check_choice",
    "check_distinct",
    "check_int",
    "check_ints",
    "check_names",
    "check_real",
]


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``, or a ``ValueError`` naming ``name``.

    Parameters
    ----------
    name : str
        The option's name, for the message.
    value : object
        An ``int`` or numpy integer (not a bool).
    minimum, maximum : int, optional
        Inclusive bounds.

    Returns
    -------
    int
    """
    ok = not isinstance(value, bool | np.bool_) and isinstance(value, int | np.integer)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            bound = f" in [{minimum}, {maximum}]"
        elif minimum is not None:
            bound = f" >= {minimum}"
        elif maximum is not None:
            bound = f" <= {maximum}"
        else:
            bound = ""
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def check_real(
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """``value`` as a finite ``float``, or a ``ValueError`` naming ``name``.

    Parameters
    ----------
    name : str
        The option's name, for the message.
    value : object
        An ``int``, ``float`` or numpy real scalar (not a bool), finite.
    gt, ge, lt, le : float, optional
        Strict and inclusive bounds.

    Returns
    -------
    float
    """
    ok = not isinstance(value, bool | np.bool_) and isinstance(
        value, int | float | np.integer | np.floating
    )
    ok = ok and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (
            (gt is None or v > gt)
            and (ge is None or v >= ge)
            and (lt is None or v < lt)
            and (le is None or v <= le)
        )
    if not ok:
        parts = []
        if gt is not None:
            parts.append(f"> {gt:g}")
        if ge is not None:
            parts.append(f">= {ge:g}")
        if lt is not None:
            parts.append(f"< {lt:g}")
        if le is not None:
            parts.append(f"<= {le:g}")
        bound = (" " + " and ".join(parts)) if parts else ""
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` (``True``/``False`` or a numpy bool), or a ``ValueError``."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    choices = tuple(choices)
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_names(name: str, values: Any, valid: Iterable[str], *, what: str = "name") -> list[str]:
    """``values`` as a list of distinct names, each one of ``valid``, or a ``ValueError``.

    A bare string is refused rather than read as its characters or guessed to be one
    name; so are an empty collection, items that are not strings, unknown names (the
    message lists the valid ones) and a name given twice. Something that is not a
    collection at all is a ``TypeError``.

    Parameters
    ----------
    name : str
        The option's name, for the message.
    values : iterable of str
        The names given.
    valid : iterable of str
        The names allowed.
    what : str, default "name"
        What a name names (``"variable"``, ``"method"``), for the message.

    Returns
    -------
    list of str
    """
    valid = list(valid)
    choices = ", ".join(valid) or "none"
    if isinstance(values, str):
        raise ValueError(
            f"{name} must be a list of {what}s, got the string {values!r}; pass [{values!r}]"
        )
    items = _non_empty_list(name, values, f"{what}s", f"give at least one of: {choices}")
    not_str = [v for v in items if not isinstance(v, str)]
    if not_str:
        raise ValueError(f"{name} must hold {what}s as strings, got {not_str!r}")
    unknown = [v for v in items if v not in valid]
    if unknown:
        raise ValueError(f"{name}: unknown {what}(s) {unknown}; valid: {choices}")
    return check_distinct(name, items)


def check_ints(name: str, values: Any, minimum: int | None = None) -> list[int]:
    """``values`` as a non-empty list of distinct integers (each :func:`check_int`).

    A single integer is a list of one. A repeated value is refused: it would run the same
    case twice.

    Parameters
    ----------
    name : str
        The option's name; an item is named ``name[i]``.
    values : int or iterable of int
    minimum : int, optional
        Inclusive lower bound of every item.

    Returns
    -------
    list of int
    """
    if isinstance(values, int | np.integer) and not isinstance(values, bool | np.bool_):
        values = [values]
    bound = "" if minimum is None else f" >= {minimum}"
    items = _non_empty_list(name, values, "integers", f"give at least one integer{bound}")
    return check_distinct(
        name, [check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(items)]
    )


def _non_empty_list(name: str, values: Any, what: str, hint: str) -> list:
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a list of {what}, got {values!r}") from None
    if not items:
        raise ValueError(f"{name} is empty; {hint}")
    return items


def check_distinct(name: str, values: list) -> list:
    """``values`` if no value appears twice, else a ``ValueError`` listing the repeated ones."""
    repeated = list(dict.fromkeys(v for v in values if values.count(v) > 1))
    if repeated:
        raise ValueError(f"{name} lists {repeated} more than once")
    return values
