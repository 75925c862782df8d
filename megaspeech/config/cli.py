"""The shared command line of every tool: `--config FILE` then dotted overrides."""
from __future__ import annotations

import argparse
from typing import TypeVar

from megaspeech.config.load import ConfigError, load_config

T = TypeVar("T")


def parse_args(schema: type[T], description: str, argv: list[str] | None = None,
               extra: callable = None) -> tuple[T, argparse.Namespace]:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config (may name `base:` files)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    if extra is not None:
        extra(p)
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=20 run.dir=/tmp/r")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the options
    try:
        cfg = load_config(schema, args.config, args.overrides)
    except ConfigError as e:
        p.exit(2, f"config error: {e}\n")
    return cfg, args
