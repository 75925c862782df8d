"""Export a checkpoint of any TP/PP layout to a transformers directory:
`python launch/export_hf.py --config configs/hf/export.yaml checkpoint=RUN_DIR out=OUT_DIR`.

`checkpoint` is a step directory (holding meta.json), a run's `checkpoints/` dir or a run dir (both:
its `latest`). `out` must be new, empty or a previous export (replaced atomically once the new one is
complete), and outside the checkpoint's run directory. The result loads with `AutoModelForCausalLM.from_pretrained(out)` (LlamaForCausalLM or
GlmForCausalLM) and `AutoTokenizer.from_pretrained(out)` (unified ids incl. speech codes, specials).
"""
from __future__ import annotations

import sys

from megaspeech.checkpoint.engine import CheckpointError
from megaspeech.checkpoint.hf_export import ExportConfig, export_hf
from megaspeech.checkpoint.offline import resolve
from megaspeech.config.cli import parse_args


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(ExportConfig, __doc__, argv)
    try:  # refused targets and bad checkpoints: one line naming the path and the fix, no traceback
        src = resolve(cfg.checkpoint)
        out = export_hf(src, cfg.out, cfg.dtype)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"export error: {e}", file=sys.stderr)
        return 2
    print(f"exported {src} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
