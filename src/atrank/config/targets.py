"""Checks of the ``_target_`` nodes (optimizer, scheduler, trainer, callbacks, loggers) of a new
training run, before anything is read or built.

Hydra instantiates these nodes late: the trainer and callbacks after the data is prepared,
the optimizer and scheduler when fitting starts, some values only when first used (early
stopping's ``patience`` at the end of the first epoch). So :func:`check_targets` instantiates
nothing but checks every key of each node against its class's signature: the key must be an
argument (unless the class takes ``**kwargs``), its value must fit the argument's annotation,
and the arguments in :data:`RANGES` must lie in their range. A class whose annotations cannot
be resolved keeps only the argument-name and range checks.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class

from atrank.config.run import TrainConfig
from atrank.model.config import SettingError
from data_prep.annotations import describe, fits

#: Hydra's own keys of a ``_target_`` node (never arguments of the class).
_HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


@dataclass(frozen=True)
class Range:
    """A number rule: the type (``int``, or ``float`` which takes ints) and the bounds.

    Attributes:
        kind: ``int`` or ``float``.
        low: the smallest value allowed (None: no lower bound).
        above: ``low`` itself is excluded (``> low`` rather than ``>= low``).
    """

    kind: type
    low: float | None = None
    above: bool = False

    def why_not(self, value: Any) -> str | None:
        """Why ``value`` breaks the rule (None when it does not; None values are allowed)."""
        if value is None:
            return None
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"must be {'an integer' if self.kind is int else 'a number'}, got {value!r}"
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return f"must be {'>' if self.above else '>='} {self.low:g}, got {value!r}"
        return None


#: Range rules by group and argument name (the groups' own classes accept more, but these
#: values are always a mistake: a negative learning rate, a step size of 0, ...).
RANGES: dict[str, dict[str, Range]] = {
    "optimizer": {
        "lr": Range(float, 0, above=True),
        "weight_decay": Range(float, 0),
        "momentum": Range(float, 0),
        "eps": Range(float, 0),
    },
    "scheduler": {
        "step_size": Range(int, 1),
        "gamma": Range(float, 0, above=True),
    },
    "trainer": {
        "max_epochs": Range(int, -1),
        "min_epochs": Range(int, 0),
        "max_steps": Range(int, -1),
        "min_steps": Range(int, 0),
        "num_nodes": Range(int, 1),
        "log_every_n_steps": Range(int, 1),
        "check_val_every_n_epoch": Range(int, 1),
        "accumulate_grad_batches": Range(int, 1),
        "gradient_clip_val": Range(float, 0),
        "num_sanity_val_steps": Range(int, -1),
    },
    "callbacks": {
        "patience": Range(int, 0),
        "min_delta": Range(float, 0),
        "save_top_k": Range(int, -1),
        "every_n_train_steps": Range(int, 0),
        "every_n_epochs": Range(int, 0),
        "refresh_rate": Range(int, 0),
    },
    "logger": {
        "flush_logs_every_n_steps": Range(int, 1),
    },
}


def check_targets(nodes: Mapping[str, Any]) -> None:
    """Checks the ``_target_`` nodes of a training config (plain values, resolved).

    Args:
        nodes: ``optimizer``, ``scheduler``, ``trainer`` (one node each, or None/empty) and
            ``callbacks``, ``logger`` (name -> node, or None/empty).

    Raises:
        SettingError: naming the key (e.g. ``optimizer.lr``) and what is wrong.
    """
    for group, node in nodes.items():
        if not node:
            continue
        if group in ("callbacks", "logger"):
            for name, sub in node.items():
                if sub:
                    check_node(sub, f"{group}.{name}", RANGES.get(group, {}))
        else:
            check_node(node, group, RANGES.get(group, {}))


def check_node(node: Mapping[str, Any], key: str, ranges: Mapping[str, Range]) -> None:
    """Checks one ``_target_`` node against its class (see the module docstring).

    Args:
        node: the node's plain values.
        key: its full config key, for messages.
        ranges: range rules by argument name.

    Raises:
        SettingError: naming ``<key>.<argument>``.
    """
    if "_target_" not in node:
        return
    target = node["_target_"]
    try:
        cls = get_class(str(target))
    except Exception as e:  # (Hydra wraps import errors of every kind)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SettingError(f"{key}._target_", f"cannot import {target!r} ({reason})") from None
    params = _parameters(cls)
    hints = _hints(cls)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for arg, value in node.items():
        if arg in _HYDRA_KEYS:
            continue
        if arg not in params and not open_ended:
            raise SettingError(f"{key}.{arg}", f"not an argument of {target}")
        why = ranges[arg].why_not(value) if arg in ranges else None
        if why is None and arg in hints and not fits(value, hints[arg]):
            why = f"must be {describe(hints[arg])} (an argument of {target}), got {value!r}"
        if why is not None:
            raise SettingError(f"{key}.{arg}", why)
    if not node.get("_partial_", False):
        for name, p in params.items():
            plain = p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            if plain and p.default is p.empty and name not in node:
                raise SettingError(f"{key}.{name}", f"is missing: {target} requires it")


def _parameters(cls: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):  # no signature: accept every key
        return {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}


def _hints(cls: Any) -> dict[str, Any]:
    init = cls.__init__ if isinstance(cls, type) else cls  # type: ignore[misc]
    try:
        return typing.get_type_hints(init)
    except Exception:  # (an annotation names a type imported only for type checkers)
        return {}


def check_new_run(run: TrainConfig) -> None:
    """The checks of a new training run beyond the schema: its ``_target_`` nodes
    (:func:`check_targets`) and the checkpoint it starts from.

    Raises:
        SettingError: naming the key.
    """
    nodes = {
        "optimizer": run.optimizer,
        "scheduler": run.scheduler,
        "trainer": run.trainer,
        "callbacks": run.callbacks,
        "logger": run.logger,
    }
    check_targets(nodes)
    if run.ckpt_path is not None and not Path(run.ckpt_path).is_file():
        raise SettingError("ckpt_path", f"no checkpoint file at {run.ckpt_path}")
