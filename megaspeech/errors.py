"""The config error and its check, below every package (vocab.py and config/ both raise it)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config problem; the message names the field (dotted path) and the fix."""


def check(cond: bool, field: str, message: str) -> None:
    """Validation helper for `__post_init__`: raise naming the field when `cond` is false."""
    if not cond:
        raise ConfigError(f"{field}: {message}")
