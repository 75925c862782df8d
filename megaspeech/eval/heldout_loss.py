"""Held-out losses: of an exported model on held-out speech pairs (the pipeline's eval stage), and the
trainer's validation loss recomputed from a checkpoint (the suite's held-out loss row).

On held-out supervised speech pairs (TTS of SOTU addresses never used for training speech), each pair
is rendered exactly as training renders it (megaspeech.data.packing.format_sample) and scored by the
transformers model:
  text    <|bos|> transcript <|eos|>                      loss over the transcript tokens
  speech  <|begin_of_speech|> codes <|end_of_speech|>     loss over the codes
  asr     speech then transcript                          loss over the transcript given the speech
  tts     transcript then speech                          loss over the codes given the transcript
Each is the mean per-token cross-entropy (nats) over all pairs, with a 95% interval from the
per-pair losses (scores.ratio_ci: the ratio estimator over pairs, as the suite's row over rows).

`speech_ngram_losses` gives the speech loss a scale: count unigram and bigram models of the training
codes scored on the same held-out positions. A model at the unigram figure has learnt only how often
each code occurs; below the bigram one it uses more context than the previous code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from megaspeech.eval.scores import ratio_ci


def heldout_losses(model_dir: str | Path, data: str | Path, limit: int = 200, batch_size: int = 8) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from megaspeech.checkpoint.hf_files import verify_export
    from megaspeech.data.packing import format_sample
    from megaspeech.data.shards import Dataset
    from megaspeech.vocab import Vocab
    vocab = Vocab.load(Path(data) / "vocab.json")
    ds = Dataset(data, vocab, kind="speech")
    verify_export(model_dir)  # a megaspeech export: every file against its checksums.json
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seqs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"text": [], "speech": [], "asr": [], "tts": []}
    for n, (_, s) in enumerate(ds):
        if n == limit:
            break
        if "text" not in s:
            raise ValueError(f"{data}: held-out pairs need transcripts (`text` ids)")
        t, m = format_sample("text", {"tokens": s["text"]}, vocab, False)
        seqs["text"].append((t, np.ones(len(t), bool)))
        t, m = format_sample("speech", {"codes": s["codes"]}, vocab, False)
        seqs["speech"].append((t, np.ones(len(t), bool)))
        t, m = format_sample("speech", s, vocab, True)
        seqs["asr"].append((t, m == 0))
        t, m = format_sample("speech", s, vocab, False)
        seqs["tts"].append((t, m == 1))
    out = {"heldout_pairs": len(seqs["text"])}
    for name, items in seqs.items():
        mean, ci = ratio_ci(*_score(model, items, batch_size))
        out[f"heldout_loss_{name}"] = mean
        out[f"heldout_loss_{name}_ci95"] = ci
    return out


def validation_loss(lm) -> dict | None:
    """The trainer's validation loss recomputed: the checkpoint's own eval.sources rows (same packing,
    same eval.batches x train.global_batch rows), token-weighted mean NLL overall and per modality, the
    interval over the packed rows (ratio_ci)."""
    import torch

    from megaspeech.checkpoint.offline import read_meta
    from megaspeech.config.load import build
    from megaspeech.config.schema import PretrainConfig
    from megaspeech.eval.lm import token_nll_rows
    from megaspeech.train.loss import MODALITIES
    from megaspeech.train.validate import heldout_rows
    cfg = build(PretrainConfig, read_meta(lm.ckpt)["config"])
    if not cfg.eval.sources:
        return None
    rows = heldout_rows(cfg, cfg.eval.batches * cfg.train.global_batch)
    sums = torch.zeros(2 * len(MODALITIES), dtype=torch.float64)
    row_nll, row_tokens = [], []
    for r in rows:
        nll = token_nll_rows(lm, r) * r["loss_mask"]
        idx = r["modality"].reshape(-1) * 2
        sums.index_add_(0, idx, nll.reshape(-1))
        sums.index_add_(0, idx + 1, r["loss_mask"].reshape(-1).double())
        row_nll.append(float(nll.sum()))
        row_tokens.append(float(r["loss_mask"].sum()))
    out = {"val_loss": float(sums[0::2].sum() / sums[1::2].sum()), "val_tokens": int(sums[1::2].sum())}
    for i, name in enumerate(MODALITIES):
        out[f"val_loss_{name}"] = float(sums[2 * i] / sums[2 * i + 1]) if sums[2 * i + 1] > 0 else None
    out["ci95"] = ratio_ci(np.array(row_nll), np.array(row_tokens))[1]
    return out


def _score(model, items, batch_size):
    """-> (sum of NLL per sequence over its scored target positions, count per sequence)."""
    import torch
    nll, cnt = [], []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        L = max(len(t) for t, _ in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        att = torch.zeros(len(chunk), L, dtype=torch.long)
        score = torch.zeros(len(chunk), L, dtype=torch.bool)
        for j, (t, m) in enumerate(chunk):
            ids[j, :len(t)] = torch.as_tensor(t)
            att[j, :len(t)] = 1
            score[j, :len(t)] = torch.as_tensor(m)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        tgt, keep = ids[:, 1:], score[:, 1:] & att[:, 1:].bool()  # the first token is never predicted
        lp = torch.log_softmax(logits, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        nll += (-(lp * keep)).sum(1).tolist()
        cnt += keep.sum(1).tolist()
    return np.asarray(nll), np.asarray(cnt, float)


def speech_ngram_losses(train: str | Path, heldout: str | Path, limit: int = 200, alpha: float = 0.1) -> dict:
    """Held-out speech loss (nats/token, the positions heldout_losses scores for `speech`: every code
    and <|end_of_speech|>) of count models of the codes in `train` (speech shards): a unigram (add-one)
    and a bigram whose rows are smoothed toward the unigram with `alpha` pseudo-counts per symbol
    (<|begin_of_speech|> is the first code's context). Fixed alpha: nothing is tuned on held-out data."""
    from megaspeech.data.shards import Dataset
    from megaspeech.vocab import Vocab
    vocab = Vocab.load(Path(heldout) / "vocab.json")
    K = vocab.speech_size  # symbols 0..K-1 codes, K = end (as a target) / begin (as a context)
    big = np.zeros((K + 1, K + 1))
    for _, s in Dataset(train, vocab, kind="speech"):
        seq = np.concatenate([[K], s["codes"], [K]])
        np.add.at(big, (seq[:-1], seq[1:]), 1)
    uni = big.sum(0) + 1
    uni /= uni.sum()
    cond = (big + alpha * (K + 1) * uni[None]) / (big.sum(1, keepdims=True) + alpha * (K + 1))
    nll = {"unigram": 0.0, "bigram": 0.0}
    n = 0
    for i, (_, s) in enumerate(Dataset(heldout, vocab, kind="speech")):
        if i == limit:
            break
        seq = np.concatenate([[K], s["codes"], [K]])
        nll["unigram"] -= np.log(uni[seq[1:]]).sum()
        nll["bigram"] -= np.log(cond[seq[:-1], seq[1:]]).sum()
        n += len(seq) - 1
    return {k: float(v / n) for k, v in nll.items()}
