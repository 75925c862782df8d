"""Text shards -> synthetic interleaved speech-text shards with a text-to-token model (arXiv 2411.17607).

    python launch/make_interleaved.py --config configs/interleave_tiny.yaml [input=... output=... model=...]
    # a job array: N independent workers over disjoint part ranges, same bytes as one worker
    python launch/make_interleaved.py --config ... worker.index=$SLURM_ARRAY_TASK_ID worker.count=N

Finished parts are skipped on restart; the worker that finds every part finished writes
manifest.json (meta: eta, span distribution, seed, text_to_token model version).
See megaspeech/synth/interleave.py (format, work split) and megaspeech/synth/generate.py (generation,
length control).
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaspeech.config.cli import parse_args  # noqa: E402
from megaspeech.config.load import check  # noqa: E402
from megaspeech.synth.generate import GenerationConfig# noqa: E402
from megaspeech.synth.interleave import InterleaveConfig  # noqa: E402


@dataclass
class WorkerConfig:
    index: int = 0  # this worker (e.g. SLURM_ARRAY_TASK_ID) ...
    count: int = 1  # ... of this many

    def __post_init__(self):
        check(0 <= self.index < self.count, "worker.index", f"must be in [0, worker.count={self.count})")


@dataclass
class MakeInterleavedConfig:
    input: str = "megaspeech:demo/text"  # text dataset (manifest.json + vocab.json with its SentencePiece model)
    output: str = "runs/interleaved"
    model: str = ""  # text-to-token run dir or checkpoint dir (launch/train_text_to_token.py)
    threads: int = 0  # torch threads; 0 = torch's default
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    def __post_init__(self):
        check(bool(self.model), "model", "set the text-to-token checkpoint (run dir of launch/train_text_to_token.py)")


def resolve(path: str) -> Path:
    if path.startswith("megaspeech:"):
        import megaspeech
        return Path(megaspeech.__file__).parent / path.split(":", 1)[1]
    return Path(path).expanduser()


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(MakeInterleavedConfig, __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from megaspeech.data.text import TextTokenizer
    from megaspeech.synth.generate import SpeechGenerator
    from megaspeech.checkpoint.offline import load_decoder
    from megaspeech.synth.interleave import run_worker
    from megaspeech.synth.spans import word_start_table
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    src, out = resolve(cfg.input), Path(cfg.output)
    tok = TextTokenizer.from_dir(src)
    model, model_vocab, version = load_decoder(cfg.model)
    tok.vocab.check_same(model_vocab, f"text-to-token model {cfg.model}")
    gen = SpeechGenerator(model, tok.vocab, cfg.generation, version)
    # word starts: stored per sample (tokenizer offsets); the piece table serves older SentencePiece shards
    table = word_start_table(tok.sp) if tok.sp is not None else None
    stats = run_worker(src, out, gen, tok.vocab, table, cfg.interleave,
                       cfg.worker.index, cfg.worker.count,
                       on_part=lambda p, s: logging.info("part %d done: %s, %.1f speech codes/s", p, s,
                                                         gen.codes_per_second))
    print(json.dumps({"output": str(out), "model": version, **stats, "speech_codes": gen.stats["codes"],
                      "speech_codes_per_s": round(gen.codes_per_second, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
