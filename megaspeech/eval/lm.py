"""The model under evaluation, from a checkpoint or an exported Hugging Face dir, and the two things
the tasks ask of it: batched log-likelihoods of continuations, and batched greedy generation.

Both backends expose `logits(ids [B, T] int64, attn [B, T] bool) -> float32 [B, T, V_padded]` (the
held-out loss) and `decoder(rows)`, a KV cache with prefill / extend / step / keep / head:
  CheckpointLM  a checkpoint of any TP/PP layout merged to one DecoderLM (synth.generate.load_decoder),
                decoded by synth.generate.KVCacheLM
  HFLM          transformers AutoModelForCausalLM of a dir written by launch/export_hf.py (vocab.json
                beside it gives the token layout), decoded through its own DynamicCache (HFDecoder)
Prompts are left-padded and continuation blocks right-padded: with causal attention a row's real
positions never see padding, so a row's scores do not depend on what it is batched with (up to float
summation order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megaspeech.model.hf import cache_kwargs, output_cache
from megaspeech.vocab import Vocab


class CheckpointLM:
    kind = "checkpoint"

    def __init__(self, path: str | Path):
        from megaspeech.checkpoint.offline import load_decoder, resolve
        from megaspeech.checkpoint.offline import read_meta
        self.ckpt = resolve(path)
        self.model, vocab, self.version = load_decoder(self.ckpt)
        # meta.json's vocab is the id layout; the SentencePiece path is in the run's config
        sp = read_meta(self.ckpt)["config"]["vocab"].get("sp_model")
        self.vocab = Vocab(**{**vocab.to_dict(), "sp_model": _find(sp)})

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, attn: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(ids, doc_ids).transpose(0, 1).float()

    def decoder(self, out_rows: torch.Tensor | None = None):
        """KV-cached incremental decoding (prefill / extend / step / keep) over the `out_rows` head rows."""
        from megaspeech.model.decode import KVCacheLM
        return KVCacheLM(self.model, out_rows)


class HFLM:
    kind = "hf"

    def __init__(self, path: str | Path):
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM
        path = Path(path)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        except (SafetensorError, OSError) as e:  # a plain HF dir (no checksums) with a damaged weight file
            files = ", ".join(str(p) for p in sorted(path.glob("*.safetensors"))) or f"{path}/*.safetensors"
            raise ValueError(f"{files}: cannot be loaded ({type(e).__name__}: {e}); the weights are damaged or "
                             f"truncated: re-export them (launch/export_hf.py) or restore the directory") from None
        self.vocab = Vocab.load(path / "vocab.json")
        self.version = f"hf:{path.resolve()}"

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, attn: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        if doc_ids is not None:
            raise ValueError("document masks are not supported for Hugging Face models; score without them")
        return self.model(input_ids=ids, attention_mask=attn.long()).logits.float()

    def decoder(self, out_rows: torch.Tensor | None = None):
        return HFDecoder(self.model, out_rows)


class HFDecoder:
    """KV-cached incremental decoding of a transformers causal LM (its own DynamicCache), with the
    interface of synth.generate.KVCacheLM: left-padded prefill, one-token steps, dropping finished
    rows; logits over the `out_rows` rows of the head only."""

    def __init__(self, model, out_rows: torch.Tensor | None = None):
        self.model = model
        w = model.lm_head.weight.detach()
        self.w_out = w if out_rows is None else w[out_rows].contiguous()

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.w_out).float()

    def _run(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model.model(input_ids=ids, attention_mask=self.attn, position_ids=pos,
                               **cache_kwargs(self.model.model, self.cache), use_cache=True)
        self.cache = output_cache(out)
        return out.last_hidden_state[:, -1]

    @torch.no_grad()
    def prefill(self, prompts: list[torch.Tensor], max_new: int) -> torch.Tensor:
        from transformers import DynamicCache
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(B, T, dtype=torch.long)
        self.attn = torch.zeros(B, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p):], self.attn[i, T - len(p):] = p, 1
        pos = (self.attn.cumsum(1) - 1).clamp(min=0)
        self.cache, self.pos = DynamicCache(), pos[:, -1]
        return self.head(self._run(ids, pos))

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.attn = torch.cat([self.attn, torch.ones(len(ids), 1, dtype=torch.long)], 1)
        self.pos = self.pos + 1
        return self.head(self._run(ids[:, None], self.pos[:, None]))

    @torch.no_grad()
    def extend(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int64 [B, S] after every row's cached tokens -> hidden [B, S, H] (KVCacheLM.extend)."""
        B, S = ids.shape
        self.attn = torch.cat([self.attn, torch.ones(B, S, dtype=torch.long)], 1)
        pos = self.pos[:, None] + 1 + torch.arange(S)
        out = self.model.model(input_ids=ids, attention_mask=self.attn, position_ids=pos,
                               **cache_kwargs(self.model.model, self.cache), use_cache=True)
        self.cache, self.pos = output_cache(out), pos[:, -1]
        return out.last_hidden_state

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.attn, self.pos = self.attn[rows], self.pos[rows]


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
        from megaspeech.checkpoint.hf_files import verify_export
        verify_export(p)  # a megaspeech export: every file against its checksums.json, naming a bad one
        return HFLM(p)
    return CheckpointLM(p)


@torch.no_grad()
def choice_loglikelihoods(lm, prompts: list[np.ndarray], choices: list[list[np.ndarray]], batch_size: int = 32
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Summed log p(choice tokens | prompt, earlier choice tokens) of the K choices of each prompt, the
    prompt run once: its KV cache (`lm.decoder`) is copied to one row per choice, and the choices run
    as one right-padded block. Returns float64 [N, K] and the choice lengths int64 [N, K]. For a spoken story
    (~375 context codes, two ~125-code endings) that is 625 positions per item instead of 1,000."""
    k = len(choices[0])
    if any(len(c) != k for c in choices) or any(len(p) == 0 for p in prompts) \
            or any(len(x) == 0 for c in choices for x in c):
        raise ValueError("every prompt needs >= 1 token and the same number of non-empty choices")
    dec = lm.decoder(None)
    ll = np.zeros((len(prompts), k))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for j in range(0, len(order), batch_size):
        idx = order[j:j + batch_size]
        conts = [torch.as_tensor(np.asarray(c, np.int64)) for i in idx for c in choices[i]]
        S = max(len(c) for c in conts)
        first = dec.prefill([torch.as_tensor(np.asarray(prompts[i], np.int64)) for i in idx], S)
        dec.keep(torch.arange(len(idx)).repeat_interleave(k))
        block = torch.zeros(len(conts), S, dtype=torch.long)
        for r, c in enumerate(conts):
            block[r, :len(c)] = c
        # continuation token 0 is predicted by the prompt's last position, token t by block position t - 1
        h = dec.extend(block[:, :S - 1]) if S > 1 else None
        rows = torch.cat([torch.full((len(c) - 1,), r) for r, c in enumerate(conts)])
        pos = torch.cat([torch.arange(len(c) - 1) for c in conts])
        nll = torch.zeros(len(conts), dtype=torch.float64)
        for a in range(0, len(rows), 1024):  # the head over the whole vocabulary, in chunks
            r, p = rows[a:a + 1024], pos[a:a + 1024]
            nll.index_add_(0, r, F.cross_entropy(dec.head(h[r, p]).float(), block[r, p + 1], reduction="none").double())
        first = first.repeat_interleave(k, 0).float()
        nll += F.cross_entropy(first, block[:, 0], reduction="none").double()
        ll[idx] = -nll.view(len(idx), k).numpy()
    return ll, np.array([[len(c) for c in cs] for cs in choices], np.int64)


@torch.no_grad()
def greedy(lm, prompts: list[np.ndarray], max_new, stop_ids: list[int], allowed: torch.Tensor | None = None,
           batch_size: int = 32, min_new=0) -> list[np.ndarray]:
    """Greedy continuation of each prompt with the backend's KV cache (`lm.decoder`), until a stop id
    (not returned) or max_new tokens. `allowed`: vocabulary ids generation is restricted to (stop ids
    are always allowed; the head runs on those rows only). max_new / min_new: one int or one per
    prompt; a stop id is refused before min_new tokens (synth.generate's length rule for speech).
    The loop is synth.generate.decode_batch, the speech generator's."""
    from megaspeech.model.decode import decode_batch
    n = len(prompts)
    hi = torch.as_tensor(np.broadcast_to(np.asarray(max_new, np.int64), (n,)).copy())
    lo = torch.as_tensor(np.broadcast_to(np.asarray(min_new, np.int64), (n,)).copy())
    stop = torch.tensor(stop_ids, dtype=torch.long)
    if allowed is not None:  # each stop id once, in the stop columns
        allowed = torch.as_tensor(allowed, dtype=torch.long)
        allowed = allowed[~torch.isin(allowed, stop)]
    rows = None if allowed is None else torch.cat([allowed, stop])
    stop_cols = stop if rows is None else torch.arange(len(rows) - len(stop), len(rows))
    dec = lm.decoder(rows)
    out: list[np.ndarray | None] = [None] * n
    order = sorted(range(n), key=lambda i: -len(prompts[i]))
    for j in range(0, n, batch_size):
        idx = order[j:j + batch_size]
        cols = decode_batch(dec, [torch.as_tensor(np.asarray(prompts[i], np.int64)) for i in idx], lo[idx], hi[idx],
                            stop_cols, lambda logits: logits.argmax(-1), rows)
        for i, c in zip(idx, cols):
            out[i] = (c if rows is None else rows[c]).numpy()
    return out


def token_nll_rows(lm, batch: dict) -> torch.Tensor:
    """Per-token NLL float64 [B, S] of a loader batch dict (labels given), the trainer's loss terms."""
    doc = batch.get("doc_ids")
    logits = lm.logits(batch["input_ids"], torch.ones_like(batch["input_ids"], dtype=torch.bool), doc)
    return F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none").double()

