"""Generate from a model and hear it: a text or spoken prompt -> the model's continuation in text or speech.

    python launch/generate.py --config configs/generate.yaml model=DIR --text "..." --mode "T->S" \
        speech_decoder=DECODER_DIR [--stream] [--vocoder griffin_lim] [temperature=0.8 top_p=0.9 seed=1]
    python launch/generate.py --config configs/generate.yaml model=DIR --wav FILE.wav --mode "S->T" \
        speech_tokenizer=TOKENIZER_DIR

DIR is a checkpoint of any layout (run dir, RUN/checkpoints, a step dir), a Hugging Face dir written by
launch/export_hf.py, or a launch/pipeline.py run dir: then its pre-trained model, and unless given, its speech
tokenizer and speech decoder. Text output is printed; speech output goes to out_dir: speech.wav (16 kHz), codes.npy,
mel.png; generation.json holds the settings and timings. Every field: megaspeech/config/generation.py.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from megaspeech.config.cli import parse_args
from megaspeech.config.generation import MODES, GenerateConfig

FLAGS = {"text": str, "wav": str, "mode": str, "vocoder": str, "temperature": float, "top_p": float,
         "seed": int, "max_new": int, "out_dir": str}


def flags(p) -> None:
    for name, kind in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                       help=f"= {name}=... ({', '.join(MODES)})" if name == "mode" else f"= {name}=...")
    p.add_argument("--stream", action="store_true", help="write audio as blocks of codes arrive (= stream=true)")


def pipeline_parts(cfg: GenerateConfig) -> GenerateConfig:
    """model=RUN of launch/pipeline.py (RUN/pretrain/stage.json): the parts its stages wrote."""
    run = Path(cfg.model)
    if not (run / "pretrain" / "stage.json").is_file():
        return cfg

    def out(stage: str) -> dict:
        f = run / stage / "stage.json"
        return json.loads(f.read_text())["outputs"] if f.is_file() else {}
    return dataclasses.replace(cfg, model=out("pretrain")["run"],
                               speech_tokenizer=cfg.speech_tokenizer or out("tokenizer").get("tokenizer"),
                               speech_decoder=cfg.speech_decoder or out("speech_decoder").get("decoder"))


def main(argv: list[str] | None = None) -> int:
    from megaspeech.errors import ConfigError
    cfg, args = parse_args(GenerateConfig, __doc__, argv, extra=flags)
    given = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    try:
        cfg = pipeline_parts(dataclasses.replace(cfg, **given, **({"stream": True} if args.stream else {})))
        from megaspeech.eval.sampling import generate
        generate(cfg, log=print)
    except ConfigError as e:
        print(f"generate: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:  # a missing or bad prompt file / model / decoder
        print(f"generate: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
