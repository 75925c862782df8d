"""Train the SentencePiece text tokenizer on real corpora; write tokenizer.model + vocab.json.

    python launch/train_tokenizer.py --config configs/data/demo.yaml [tokenizer.vocab_size=8000 ...]

The model has no bos/eos of its own (those are unified specials), so its piece ids are exactly the
unified text ids [0, vocab_size). vocab.json (megaspeech.vocab.Vocab) records the layout.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megaspeech.config.cli import parse_args  # noqa: E402
from megaspeech.data.corpora import interleave_corpora  # noqa: E402
from megaspeech.data.prep_config import DataPrepConfig  # noqa: E402
from megaspeech.vocab import Vocab  # noqa: E402


def lines(corpora: list[str]):
    """Non-empty lines of every document; SentencePiece samples `input_sentence_size` of them."""
    for _, _, text in interleave_corpora(corpora):
        for line in text.splitlines():
            line = line.strip()
            if line:
                yield line


def main(argv=None) -> None:
    import sentencepiece as spm

    cfg, _ = parse_args(DataPrepConfig, __doc__.splitlines()[0], argv)
    t = cfg.tokenizer
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(cfg.corpora), model_writer=model, vocab_size=t.vocab_size,
        model_type=t.model_type, character_coverage=t.character_coverage,
        input_sentence_size=t.input_sentence_size, shuffle_input_sentence=True,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, byte_fallback=True,
        num_threads=t.num_threads, minloglevel=2)
    tmp = out / f".tokenizer.model.tmp{os.getpid()}"
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, out / "tokenizer.model")
    vocab = Vocab(text_size=t.vocab_size, speech_size=t.speech_size, sp_model="tokenizer.model")
    vocab.save(out / "vocab.json")
    print(f"wrote {out}/tokenizer.model ({len(model.getvalue())} bytes) and vocab.json "
          f"(text_size={vocab.text_size} speech_size={vocab.speech_size} size={vocab.size})")


if __name__ == "__main__":
    main()
