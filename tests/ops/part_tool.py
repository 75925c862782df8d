"""Stand-in data-preparation tool for the job-array test: part `part.index` of `part.count`.

Writes OUT/part-<i>-of-<n> (atomically) holding the Slurm array task id it ran under, and refuses
to run a part twice, as the shard tools' resume rule skips finished parts.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megaspeech.config.cli import parse_args  # noqa: E402


@dataclass
class Part:
    index: int = 0
    count: int = 1


@dataclass
class PartConfig:
    out: str = "parts"
    part: Part = field(default_factory=Part)


def main() -> None:
    cfg, _ = parse_args(PartConfig, "job-array stand-in")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"part-{cfg.part.index}-of-{cfg.part.count}"
    if target.exists():
        sys.exit(f"{target} already done")
    tmp = target.with_suffix(".tmp")
    tmp.write_text(os.environ.get("SLURM_ARRAY_TASK_ID", "?"))
    os.replace(tmp, target)


if __name__ == "__main__":
    main()
