"""Text <-> token ids in the unified space, through the SentencePiece model named by the Vocab.

SentencePiece ids are the unified text ids [0, vocab.text_size) (the model is trained without its
own bos/eos so that every piece id is text); bos/eos/speech markers are unified specials.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from megaspeech.vocab import Vocab


class TextTokenizer:
    """encode(str) -> int32 [T] text ids; decode(ids) -> str (speech codes and specials shown as tags)."""

    def __init__(self, vocab: Vocab, base_dir: str | Path | None = None):
        import sentencepiece as spm

        if not vocab.sp_model:
            raise ValueError("vocab.sp_model is not set: point it at the SentencePiece model "
                             "(written by launch/train_tokenizer.py)")
        path = Path(vocab.sp_model)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model {path} not found (vocab.sp_model); "
                                    f"run launch/train_tokenizer.py or fix the path")
        self.vocab, self.path = vocab, path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        if self.sp.get_piece_size() != vocab.text_size:
            raise ValueError(f"{path} has {self.sp.get_piece_size()} pieces but vocab.text_size="
                             f"{vocab.text_size}; set vocab.text_size={self.sp.get_piece_size()}")

    @classmethod
    def from_dir(cls, directory: str | Path) -> "TextTokenizer":
        """Load `directory/vocab.json` and its SentencePiece model (path relative to the dir)."""
        directory = Path(directory)
        return cls(Vocab.load(directory / "vocab.json"), base_dir=directory)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.sp.encode(text), dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in self.sp.encode(texts)]

    def decode(self, ids) -> str:
        """Unified ids -> text; runs of speech codes become `<speech:N>`, specials their names."""
        v, out, run = self.vocab, [], []
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        n_speech = 0

        def flush():
            if run:
                out.append(self.sp.decode(run))
                run.clear()
        for i in ids:
            if i < v.text_size:
                if n_speech:
                    out.append(f"<speech:{n_speech}>")
                    n_speech = 0
                run.append(i)
                continue
            flush()
            if v.is_speech(i):
                n_speech += 1
            else:
                if n_speech:
                    out.append(f"<speech:{n_speech}>")
                    n_speech = 0
                out.append(v.specials[i - v.special_offset] if i < v.size else f"<unk:{i}>")
        flush()
        if n_speech:
            out.append(f"<speech:{n_speech}>")
        return "".join(out)
