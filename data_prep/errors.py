"""The one exception type of the preparation pipeline."""

from __future__ import annotations


class PrepError(ValueError):
    """A user-facing preparation failure.

    The message names the file or table, the column or config key and, for row-level
    problems, the first offending row, so it can be fixed without a debugger.
    """
