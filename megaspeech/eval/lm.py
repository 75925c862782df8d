"""The model under evaluation, from a checkpoint or an exported Hugging Face dir, and the two things
the tasks ask of it: batched log-likelihoods of continuations, and batched greedy generation.

Both backends expose `logits(ids [B, T] int64, attn [B, T] bool) -> float32 [B, T, V_padded]`:
  CheckpointLM  a checkpoint of any TP/PP layout merged to one DecoderLM (synth.generate.load_decoder)
  HFLM          transformers AutoModelForCausalLM of a dir written by launch/export_hf.py (vocab.json
                beside it gives the token layout)
Batches are right-padded: with causal attention a row's real positions never see its padding, so a
row's scores do not depend on what it is batched with (up to float summation order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megaspeech.vocab import Vocab


class CheckpointLM:
    kind = "checkpoint"

    def __init__(self, path: str | Path):
        from megaspeech.synth.generate import load_decoder, resolve_checkpoint
        from megaspeech.train.checkpoint import read_meta
        self.ckpt = resolve_checkpoint(path)
        self.model, vocab, self.version = load_decoder(self.ckpt)
        # meta.json's vocab is the id layout; the SentencePiece path is in the run's config
        sp = read_meta(self.ckpt)["config"]["vocab"].get("sp_model")
        self.vocab = Vocab(**{**vocab.to_dict(), "sp_model": _find(sp)})

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, attn: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(ids, doc_ids).transpose(0, 1).float()

    @torch.no_grad()
    def hidden(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """[B, T, H] before the output head (the head runs on the scored positions only)."""
        x = self.model.embedding(ids)
        for block in self.model.blocks:
            x = block(x, None)
        return x.transpose(0, 1)

    @torch.no_grad()
    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(h).float()


class HFLM:
    kind = "hf"

    def __init__(self, path: str | Path):
        from transformers import AutoModelForCausalLM
        path = Path(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.vocab = Vocab.load(path / "vocab.json")
        self.version = f"hf:{path.resolve()}"

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, attn: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        if doc_ids is not None:
            raise ValueError("document masks are not supported for Hugging Face models; score without them")
        return self.model(input_ids=ids, attention_mask=attn.long()).logits.float()

    @torch.no_grad()
    def hidden(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return self.model.model(input_ids=ids, attention_mask=attn.long()).last_hidden_state

    @torch.no_grad()
    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h).float()


def _find(sp: str | None) -> str | None:
    """A relative sp_model path as the training run saw it (its cwd, usually the repo root)."""
    if sp is None or Path(sp).is_absolute() or Path(sp).is_file():
        return sp
    import megaspeech
    repo = Path(megaspeech.__file__).resolve().parents[1] / sp
    return str(repo) if repo.is_file() else sp


def load_lm(path: str | Path):
    """A Hugging Face dir (config.json + vocab.json) or a checkpoint (run dir / checkpoints / step dir)."""
    p = Path(path)
    if (p / "config.json").is_file():
        if not (p / "vocab.json").is_file():
            raise FileNotFoundError(f"{p}: a Hugging Face dir without vocab.json; export it with launch/export_hf.py "
                                    f"(which writes the token layout beside the weights)")
        return HFLM(p)
    return CheckpointLM(p)


def _pad(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(np.asarray(s, np.int64))
        attn[i, :len(s)] = True
    return ids, attn


def loglikelihoods(lm, prompts: list[np.ndarray], conts: list[np.ndarray], batch_size: int = 32
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Summed log p(continuation tokens | prompt, earlier continuation tokens) float64 [N] and the
    continuation lengths int64 [N]. Items are sorted by length into batches (less padding); the
    output head (the largest matmul of a small model) runs only on the positions that predict a
    continuation token."""
    seqs = [np.concatenate([np.asarray(p, np.int64), np.asarray(c, np.int64)]) for p, c in zip(prompts, conts)]
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in conts):
        raise ValueError("every prompt and continuation needs at least one token (start prompts with <|bos|>)")
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    ll = np.zeros(len(seqs))
    for j in range(0, len(order), batch_size):
        idx = order[j:j + batch_size]
        ids, attn = _pad([seqs[i] for i in idx], lm.vocab.pad_id)
        h = lm.hidden(ids[:, :-1], attn[:, :-1])
        rows = torch.cat([torch.full((len(conts[i]),), r) for r, i in enumerate(idx)])
        # the hidden state at position t predicts token t + 1
        pos = torch.cat([torch.arange(len(prompts[i]) - 1, len(seqs[i]) - 1) for i in idx])
        nll = F.cross_entropy(lm.head(h[rows, pos]), ids[rows, pos + 1], reduction="none").double()
        ll[idx] = -torch.zeros(len(idx), dtype=torch.float64).index_add_(0, rows, nll).numpy()
    return ll, np.array([len(c) for c in conts], np.int64)


@torch.no_grad()
def greedy(lm, prompts: list[np.ndarray], max_new: int, stop_ids: list[int], allowed: torch.Tensor | None = None,
           batch_size: int = 32) -> list[np.ndarray]:
    """Greedy continuation of each prompt until a stop id (not returned) or max_new tokens. `allowed`:
    vocabulary ids generation is restricted to (stop ids are always allowed). Each step re-runs the
    right-padded batch (no KV cache: works the same for both backends; answers are short)."""
    stop = torch.tensor(stop_ids)
    out: list[np.ndarray | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for j in range(0, len(order), batch_size):
        idx = order[j:j + batch_size]
        seqs = [list(np.asarray(prompts[i], np.int64)) for i in idx]
        gen: list[list[int]] = [[] for _ in idx]
        live = list(range(len(idx)))
        for _ in range(max_new):
            if not live:
                break
            ids, attn = _pad([np.asarray(seqs[r]) for r in live], lm.vocab.pad_id)
            h = lm.hidden(ids, attn)
            last = lm.head(h[torch.arange(len(live)), attn.sum(1) - 1])  # the head on each row's last token only
            if allowed is not None:
                keep = torch.full_like(last, float("-inf"))
                cols = torch.cat([allowed, stop])
                keep[:, cols] = last[:, cols]
                last = keep
            nxt = last.argmax(-1)
            still = []
            for r, t in zip(live, nxt.tolist()):
                if t in stop_ids:
                    continue
                seqs[r].append(t)
                gen[r].append(t)
                still.append(r)
            live = still
        for r, i in enumerate(idx):
            out[i] = np.asarray(gen[r], np.int64)
    return out


def token_nll_rows(lm, batch: dict) -> torch.Tensor:
    """Per-token NLL float64 [B, S] of a loader batch dict (labels given), the trainer's loss terms."""
    doc = batch.get("doc_ids")
    logits = lm.logits(batch["input_ids"], torch.ones_like(batch["input_ids"], dtype=torch.bool), doc)
    return F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none").double()

