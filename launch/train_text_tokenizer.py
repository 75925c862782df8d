"""Train the SentencePiece text tokenizer on real corpora; write tokenizer.model + vocab.json.

    python launch/train_text_tokenizer.py --config configs/data/demo.yaml [tokenizer.vocab_size=8000 ...]

The model has no bos/eos of its own (those are unified specials), so its piece ids are exactly the
unified text ids [0, vocab_size). vocab.json (megaspeech.vocab.Vocab) records the layout.
Library side: megaspeech.data.prep_text.train_sentencepiece (also the recipe pipeline's text stage).
"""
from __future__ import annotations


from megaspeech.config.cli import parse_args
from megaspeech.config.prep import DataPrepConfig
from megaspeech.data.prep_text import train_sentencepiece


def main(argv=None) -> None:
    cfg, _ = parse_args(DataPrepConfig, __doc__.splitlines()[0], argv)
    train_sentencepiece(cfg)


if __name__ == "__main__":
    main()
