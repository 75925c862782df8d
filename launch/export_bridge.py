"""Export a bridge-model checkpoint (task: bridge, any TP layout), LoRA adapters merged into the LM:
`python launch/export_bridge.py --config configs/bridge_export.yaml checkpoint=RUN_DIR out=OUT_DIR` (see megaspeech/bridge/export.py).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from megaspeech.config.cli import parse_args
from megaspeech.config.load import check


@dataclass
class ExportBridgeConfig:
    checkpoint: str = ""
    out: str = ""

    def __post_init__(self):
        check(bool(self.checkpoint), "checkpoint", "set checkpoint=<step dir | run dir>")
        check(bool(self.out), "out", "set out=<output directory>")


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(ExportBridgeConfig, __doc__, argv)
    from megaspeech.bridge.export import export_bridge
    from megaspeech.checkpoint.offline import resolve
    src = resolve(cfg.checkpoint)
    print(f"exported {src} -> {export_bridge(src, cfg.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
