"""Whether a config value fits an annotation: the checks of the values that entry points pass
to readers and classes they do not build yet (dataset options, ``_target_`` nodes).

Plain values only (YAML scalars, lists, dicts); imports neither polars nor torch.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

#: The values that fit a scalar annotation (an int fits a float, a string a path).
_SCALARS: dict[Any, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
    Path: (str, Path),
}


def fits(value: Any, hint: Any) -> bool:
    """Whether a plain config value (YAML scalars, lists, dicts) fits an annotation.

    Nested ``_target_`` dicts fit any class (Hydra builds them); annotations this checker
    does not know (callables, type variables, ...) accept everything.

    Args:
        value: the value.
        hint: a resolved annotation.

    Returns:
        False only when the value certainly cannot be passed as this argument.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, h) for h in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None):
        return value is None
    if isinstance(value, Mapping) and "_target_" in value:
        return True
    if origin is not None:
        return _fits_generic(value, origin, args)
    if hint in _SCALARS:  # (a bool is an int to Python, never to a config)
        return isinstance(value, _SCALARS[hint]) and (hint is bool or not isinstance(value, bool))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _fits_generic(value: Any, origin: Any, args: tuple[Any, ...]) -> bool:
    if origin in (list, Sequence, Iterable) or origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            same = len(value) == len(args)
            return same and all(fits(v, h) for v, h in zip(value, args, strict=True))
        return not args or all(fits(v, args[0]) for v in value)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        return len(args) != 2 or all(fits(v, args[1]) for v in value.values())
    return True


def describe(hint: Any) -> str:
    """A short readable form of an annotation (``int or null``, ``one of 'a', 'b'``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        literals = [a for h in args if typing.get_origin(h) is Literal for a in typing.get_args(h)]
        others = [describe(h) for h in args if typing.get_origin(h) is not Literal]
        return " or ".join([*([describe(Literal[tuple(literals)])] if literals else []), *others])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is not None:
        return f"a {getattr(origin, '__name__', str(origin))}"
    return getattr(hint, "__name__", str(hint))
