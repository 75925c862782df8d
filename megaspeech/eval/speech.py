"""Spoken versions of evaluation texts: TTS voices (megaspeech.speech.tts) -> speech tokenizer codes.

Texts are asked for with their voice, (text, voice): every spoken part of one item (a story's context,
endings and whole readings; a word pair; a QA item) is read by the item's one voice, `voice_for(item
id)`, a hash among the suite's `voices` (as sStoryCloze keeps one speaker per story); an ASR/TTS
sentence gets `voice_for(text)`. The voices must be voices training speech never used
(megaspeech.speech.tts.training_voices(); EVAL_VARIANTS are kept out of it). Codes are cached in
OUT/speech_codes.npz (+ .json keys), keyed by tokenizer dir, voice and text, written atomically and read
without pickle, so a re-run of the suite synthesizes nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from megaspeech.config.load import ConfigError
from megaspeech.fs import atomic_path, write_atomic


def check_unseen_voices(voices: list[str]) -> None:
    from megaspeech.speech.tts import EVAL_VARIANTS, training_voices
    seen = sorted(set(voices) & training_voices())
    if seen:
        raise ConfigError(f"voices: {seen[0]} is a voice training speech uses (megaspeech.speech.tts.all_voices); "
                          f"pick espeak-ng voices with a variant no training set uses, {EVAL_VARIANTS}, "
                          f"e.g. espeak:en-us+m7")


class SpeechCodes:
    def __init__(self, tokenizer_dir: str | Path, voices: list[str], cache_dir: str | Path, batch: int = 16):
        check_unseen_voices(voices)
        self.dir, self.voices, self.batch = Path(tokenizer_dir), list(voices), batch
        self.cache_path = Path(cache_dir) / "speech_codes.npz"
        self.tag = hashlib.sha256((self.dir / "model.pt").read_bytes()).hexdigest()[:12] \
            if (self.dir / "model.pt").is_file() else str(self.dir.resolve())
        self.cache: dict[str, np.ndarray] = {}
        keys_path = self.cache_path.with_suffix(".json")
        if self.cache_path.is_file() and keys_path.is_file():
            keys = json.loads(keys_path.read_text())
            with np.load(self.cache_path, allow_pickle=False) as z:
                codes, offs = z["codes"], z["offsets"]
            self.cache = {k: codes[offs[i]:offs[i + 1]] for i, k in enumerate(keys)}
        self._tok = None
        self.synthesized = 0

    def voice_for(self, key: str) -> str:
        """The voice of an item id (or of a lone sentence's text): a hash among the suite's voices."""
        return self.voices[zlib.crc32(key.encode()) % len(self.voices)]

    def _key(self, text: str, voice: str) -> str:
        return f"{self.tag}|{voice}|{text}"

    def codes(self, requests: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        """(text, voice) -> raw speech codes int64 [C] for every distinct request."""
        from megaspeech.speech.tts import synthesize
        todo = sorted({(t, v) for t, v in requests if self._key(t, v) not in self.cache})
        if todo:
            from megaspeech.speech.tokenizer import load_tokenizer, tokenize_audios
            if self._tok is None:
                self._tok = load_tokenizer(self.dir)[0]
            for i in range(0, len(todo), self.batch):
                chunk = todo[i:i + self.batch]
                audios = [synthesize(t, v) for t, v in chunk]
                for (t, v), c in zip(chunk, tokenize_audios(self._tok, audios)):
                    self.cache[self._key(t, v)] = np.asarray(c, np.int64)
            self.synthesized += len(todo)
            self._save()
        return {(t, v): self.cache[self._key(t, v)] for t, v in set(requests)}

    def _save(self) -> None:
        keys = sorted(self.cache)
        offs = np.cumsum([0] + [len(self.cache[k]) for k in keys])
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.cache_path, suffix=".npz") as tmp:  # np.savez appends .npz to other names
            np.savez(tmp, codes=np.concatenate([self.cache[k] for k in keys]) if keys else np.zeros(0, np.int64),
                     offsets=offs)
        write_atomic(self.cache_path.with_suffix(".json"), json.dumps(keys))
