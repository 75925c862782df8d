"""Audio files / `audio` shards -> `speech` shards of codes (12.5 Hz at tokenizer.pool 4) with a trained tokenizer.

    python launch/tokenize_speech.py --config configs/speech_tokenize.yaml \
        tokenize.tokenizer=runs/speech_tokenizer_tiny/tokenizer 'tokenize.inputs=[data/wavs]' \
        tokenize.out_dir=runs/speech_tokens/train tokenize.workers=2
GLM-4-Voice's released tokenizer works the same way, read as downloaded (docs/speech_tokenizer.md):
    tokenize.tokenizer=/models/glm-4-voice-tokenizer tokenize.tokenizer_format=glm4voice
Finished parts are skipped on re-run; for a job array pass --worker I --num_workers N
(e.g. SLURM_ARRAY_TASK_ID) and run once more (or any worker) to merge the manifest.
"""
import os
import sys
from dataclasses import dataclass, field

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process

from megaspeech.config.cli import parse_args
from megaspeech.speech.tokenize_corpus import TokenizeConfig, tokenize_corpus


@dataclass
class Config:
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)


def _extra(p):
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=1)


if __name__ == "__main__":
    cfg, args = parse_args(Config, __doc__, extra=_extra)
    r = tokenize_corpus(cfg.tokenize, args.worker, args.num_workers)
    for b in r["bad"]:
        print(f"bad audio: {b['source']}: {b['error']}", file=sys.stderr)
    print(f"tokenized {r['samples']} utterances; {len(r['bad'])} bad; {r['skipped_parts']}/{r['parts']} parts "
          f"were already done; manifest {'written' if r['done'] else 'pending (other workers)'}")
