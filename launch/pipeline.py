"""The GLM-4-Voice recipe in one command: text -> speech corpus -> speech tokenizer -> speech shards ->
text-to-token -> interleaved + spoken QA -> pre-training (GLM-4-Voice mixture) -> HF export -> eval -> report.

    python launch/pipeline.py --config configs/pipeline/glm4voice_toy.yaml [--from STAGE] [--until STAGE] [k=v ...]
    python launch/pipeline.py --config ... --compare     # the recipe vs its variants (RUN/ablation.md)

Each stage writes RUN/<stage>/ (outputs, stage.json marker with its inputs hash, log.txt); a rerun
skips finished stages, resumes an interrupted one and redoes a stage whose inputs changed. --from
redoes STAGE and the later ones. See megaspeech/pipeline/ (runner.py: the rule; stages.py: the links).
"""
from __future__ import annotations

import sys
from pathlib import Path

from megaspeech.config.cli import parse_args
from megaspeech.config.pipeline import PipelineConfig


def main(argv: list[str] | None = None) -> int:
    from megaspeech.pipeline.layout import STAGES

    def extra(p):
        p.add_argument("--from", dest="start", choices=STAGES[:-1], default=None, help="redo from this stage on")
        p.add_argument("--until", choices=STAGES[:-1], default=None, help="stop after this stage")
        p.add_argument("--compare", action="store_true",
                       help="run nothing; print the recipe and its variants side by side (RUN/report*.json)")
    cfg, args = parse_args(PipelineConfig, __doc__.splitlines()[0], argv, extra=extra)
    if args.compare:
        from megaspeech.pipeline.summary import ablation_table
        try:
            print(ablation_table(Path(cfg.run.dir)), end="")
        except FileNotFoundError as e:
            print(f"pipeline error: {e}", file=sys.stderr)
            return 2
        return 0
    from megaspeech.pipeline.runner import PipelineError, run_pipeline
    try:
        run_pipeline(cfg, args.start, args.until)
    except PipelineError as e:
        print(f"pipeline error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
