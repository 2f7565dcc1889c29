"""User-facing errors: a one-line message naming the key or file, not a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf.errors import MissingMandatoryValue

from atrank.config import ConfigError
from data_prep.errors import PrepError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, PrepError, MissingMandatoryValue)

F = TypeVar("F", bound=Callable[..., object])


def friendly_errors(fn: F) -> F:
    """Wraps a task function: a config or data error exits with status 2 and its message.

    Set ``HYDRA_FULL_ERROR=1`` for the full traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
