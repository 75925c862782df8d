"""Text shards -> synthetic interleaved speech-text shards with a text-to-token model (arXiv 2411.17607):
the job of launch/make_interleaved.py and of the recipe's `interleaved` stage.

Finished parts are skipped on restart; the worker that finds every part finished writes
manifest.json (meta: eta, span distribution, seed, text_to_token model version).
See megaspeech/synth/interleave.py (format, work split) and megaspeech/synth/generate.py (generation,
length control).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from megaspeech.config.load import check
from megaspeech.config.worker import WorkerConfig
from megaspeech.fs import resolve_path
from megaspeech.synth.generate import GenerationConfig
from megaspeech.synth.interleave import InterleaveConfig

log = logging.getLogger(__name__)


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


def make_interleaved(cfg: MakeInterleavedConfig) -> dict:
    """This worker's parts of the interleaved dataset -> its statistics (and the generator's)."""
    import torch

    from megaspeech.checkpoint.offline import load_decoder
    from megaspeech.data.text import TextTokenizer
    from megaspeech.synth.generate import SpeechGenerator
    from megaspeech.synth.interleave import run_worker
    from megaspeech.synth.spans import word_start_table
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    src, out = resolve_path(cfg.input), cfg.output  # output: a directory or an s3:// URL (ShardWriter)
    tok = TextTokenizer.from_dir(src)
    model, model_vocab, version = load_decoder(cfg.model)
    tok.vocab.check_same(model_vocab, f"text-to-token model {cfg.model}")
    gen = SpeechGenerator(model, tok.vocab, cfg.generation, version)
    # word starts: stored per sample (tokenizer offsets); the piece table serves older SentencePiece shards
    table = word_start_table(tok.sp) if tok.sp is not None else None
    stats = run_worker(src, out, gen, tok.vocab, table, cfg.interleave, cfg.worker.index, cfg.worker.count,
                       on_part=lambda p, s: log.info("part %d done: %s, %.1f speech codes/s", p, s,
                                                     gen.codes_per_second))
    return {"output": str(out), "model": version, **stats, "speech_codes": gen.stats["codes"],
            "speech_codes_per_s": round(gen.codes_per_second, 1)}
