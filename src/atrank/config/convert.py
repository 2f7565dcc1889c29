"""A composed config -> its typed dataclasses, field by field, every error naming its key."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from atrank.model.config import SettingError
from data_prep.errors import PrepError

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing or malformed; the message names the key."""


def _convert(schema: type[T], node: Any, key: str) -> T:
    """Builds ``schema`` from ``node`` field by field, so that an error names its full key."""
    if node is None:
        raise ConfigError(f"config key {key!r} is missing")
    hints = get_type_hints(schema)
    values: dict[str, Any] = {}
    known = {f.name for f in fields(schema)}  # type: ignore[arg-type]
    extra = sorted(set(node) - known) if isinstance(node, (dict, DictConfig)) else []
    if extra:  # a `+key=value` added to a typed node: refused, never silently dropped
        raise ConfigError(f"config key '{_join(key, extra[0])}': not a key of {schema.__name__}")
    for f in fields(schema):  # type: ignore[arg-type]
        sub = _join(key, f.name)
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, f.name):
            raise ConfigError(f"config key {sub!r} is missing: set it, e.g. {sub}=...")
        if f.name not in node:
            continue  # the schema's default
        try:
            value = node[f.name]  # (resolves interpolations)
        except OmegaConfBaseException as e:
            raise ConfigError(f"config key {sub!r}: {_message(e)}") from None
        values[f.name] = _value(hints[f.name], value, sub)
    try:
        return schema(**values)
    except SettingError as e:
        raise ConfigError(f"config key '{_join(key, e.key)}': {e.why}") from None
    except (PrepError, ValueError, TypeError) as e:
        raise ConfigError(f"config key {key!r}: {e}") from None


def _value(hint: Any, value: Any, key: str) -> Any:
    """One field's value: a nested schema, a mapping of schemas, an enum or a plain value."""
    if isinstance(hint, type) and is_dataclass(hint):
        return _convert(hint, value, key)
    if get_origin(hint) is dict and is_dataclass(get_args(hint)[1]) and value is not None:
        return {
            str(k): _convert(get_args(hint)[1], v, _join(key, str(k))) for k, v in value.items()
        }
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _message(e: OmegaConfBaseException) -> str:
    return str(getattr(e, "msg", None) or e).splitlines()[0]


def typed_root(schema: type[T], cfg: DictConfig) -> T:
    """Re-validates ``cfg`` against ``schema`` (types at the edge), then converts it."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config key '{getattr(e, 'full_key', '')}': {_message(e)}") from None
    return _convert(schema, merged, "")


def plain(cfg: DictConfig) -> dict[str, Any]:
    """A composed config as plain, resolved JSON types (what checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
