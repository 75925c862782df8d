"""A folder / manifest / LibriSpeech tree of your own recordings -> `audio` shards (16 kHz mono FLAC
+ transcript) for launch/train_speech_tokenizer.py.

    python launch/ingest_audio.py --config configs/ingest_audio.yaml \
        'ingest.inputs=[/data/my_recordings]' ingest.out_dir=runs/speech/mine ingest.on_error=skip \
        ingest.pseudo_label=true
Inputs: folders (transcript beside each file as <stem>.txt), LibriSpeech-style trees (*.trans.txt),
TSV (`path<TAB>transcript`) or JSONL ({"audio_filepath", "text"}) manifests, files, globs.
Finished parts are skipped on re-run; for a job array pass --worker I --num_workers N and run once
more (or any worker) to merge the manifest.
"""
import os
import sys
from dataclasses import dataclass, field

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process

from megaspeech.config.cli import parse_args
from megaspeech.speech.ingest import IngestConfig, IngestError, ingest


@dataclass
class Config:
    ingest: IngestConfig = field(default_factory=IngestConfig)


def _extra(p):
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=1)


if __name__ == "__main__":
    cfg, args = parse_args(Config, __doc__, extra=_extra)
    try:
        r = ingest(cfg.ingest, args.worker, args.num_workers)
    except (IngestError, FileNotFoundError) as e:
        sys.exit(f"ingest_audio: {e}")
    if not r["done"]:
        print(f"{r['parts'] - r['skipped_parts']} parts written; manifest pending (other workers)")
    else:
        bad = ", ".join(f"{k} {v}" for k, v in r["bad"].items() if v) or "none"
        print(f"{r['samples']} utterances, {r['hours']:.2f} h ({r['transcripts']} with transcripts, "
              f"{r['pseudo_labels']} pseudo-labelled) in {cfg.ingest.out_dir}; bad files skipped: {bad}")
