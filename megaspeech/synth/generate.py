"""Batched text -> speech-code generation with a KV cache, for DecoderLM weights (TP=1, one process).

`KVCacheLM` is a small inference module: it calls the model's own submodules (embedding, norms,
qkv / proj / MLP linears) on [B, S, H] activations and keeps per-layer key/value caches, so no
inference path is added to model/llm.py and no weights are copied (except the output rows it is
restricted to, gathered once). Prompts of different lengths are left-padded: padded keys are masked
and RoPE positions start at each row's first real token, so a row's result does not depend on the
padding (up to float summation order).

Text-to-token prompts use the TTS rendering of the data pipeline (megaspeech/data/packing.py):
    <|bos|> text ids <|begin_of_speech|>  ->  codes ... <|end_of_speech|>
Generation is constrained to speech codes and <|end_of_speech|> (the head is evaluated on those
speech_size + 1 rows only, which is also cheaper than the full vocabulary).

Length control: speech codes come at 12.5 per second and read speech at ~2.5 words per second
(150 words per minute), so a span of w words is expected to take e = codes_per_second * w /
words_per_second = 5 w codes. <|end_of_speech|> is refused before floor(min_ratio * e) codes and
forced at ceil(max_ratio * e) + 2 codes.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megaspeech.config.load import check
from megaspeech.model.llm import DecoderLM, apply_rope, rope_tables
from megaspeech.vocab import Vocab


@dataclass
class GenerationConfig:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    batch_size: int = 64
    codes_per_second: float = 12.5
    words_per_second: float = 2.5
    min_ratio: float = 0.3
    max_ratio: float = 2.0
    seed: int = 0

    def __post_init__(self):
        check(self.temperature >= 0, "generation.temperature", "must be >= 0 (0 = greedy)")
        check(0 < self.top_p <= 1, "generation.top_p", "must be in (0, 1]")
        check(self.batch_size >= 1, "generation.batch_size", "must be >= 1")
        check(0 <= self.min_ratio <= self.max_ratio, "generation.min_ratio", "must be in [0, generation.max_ratio]")

    def length_limits(self, n_words: int) -> tuple[int, int]:
        """(min, max) speech codes for a span of n_words words."""
        e = self.codes_per_second * n_words / self.words_per_second
        return int(math.floor(self.min_ratio * e)), int(math.ceil(self.max_ratio * e)) + 2


class KVCacheLM:
    """Incremental decoding over a DecoderLM's modules. `out_rows`: vocabulary rows the head is
    evaluated on (None = all); logits come back in that order."""

    def __init__(self, model: DecoderLM, out_rows: torch.Tensor | None = None):
        self.model = model.eval()
        self.blocks = model.blocks
        a = self.blocks[0].attn
        self.kv, self.group, self.heads, self.hd = a.kv, a.group, a.heads, a.hd
        self.rot_dim, self.theta, self.interleaved = a.rot_dim, a.theta, a.interleaved
        w = model.head.out.weight
        self.w_out = w if out_rows is None else w.detach()[out_rows].contiguous()

    # -- internals ---------------------------------------------------------------------------
    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos int64 [B, S] -> cos, sin [B, 1, S, rot/2]."""
        cos, sin = rope_tables(self.max_len, self.rot_dim, self.theta, pos.device)
        return cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)

    def _layers(self, x: torch.Tensor, pos: torch.Tensor, t0: int, mask: torch.Tensor | None,
                causal: bool) -> torch.Tensor:
        """x [B, S, H] at cache slots [t0, t0 + S) -> hidden [B, S, H]; fills the caches."""
        B, S, _ = x.shape
        cos, sin = self._rope(pos)
        for blk, kc, vc in zip(self.blocks, self.k, self.v):
            qkv = blk.attn.qkv(blk.attn_norm(x)).view(B, S, self.kv, self.group + 2, self.hd).permute(0, 2, 3, 1, 4)
            q = qkv[:, :, : self.group].reshape(B, self.heads, S, self.hd)
            kc[:, :, t0:t0 + S] = apply_rope(qkv[:, :, self.group], cos, sin, self.interleaved)
            vc[:, :, t0:t0 + S] = qkv[:, :, self.group + 1]
            q = apply_rope(q, cos, sin, self.interleaved)
            k, v = kc[:, :, :t0 + S], vc[:, :, :t0 + S]
            if S == 1:  # decode: grouped matmuls (no K/V expansion for GQA), additive pad bias
                att = torch.matmul(q.view(B, self.kv, self.group, self.hd), k.transpose(-1, -2)) * self.hd ** -0.5
                if mask is not None:
                    att = att + mask
                o = torch.matmul(torch.softmax(att, -1), v).view(B, self.heads, 1, self.hd)
            elif mask is None:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=self.group > 1)
            else:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.group > 1)
            x = x + blk.attn.proj(o.transpose(1, 2).reshape(B, S, self.heads * self.hd))
            x = x + blk.mlp(blk.mlp_norm(x))
        return x

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.model.head.norm(h), self.w_out)

    # -- API ---------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, prompts: list[torch.Tensor], max_new: int, all_logits: bool = False) -> torch.Tensor:
        """Left-pad `prompts` (int64 [T_i]) and run them; caches sized for max_new more tokens.
        Returns logits [B, V'] of each prompt's last token ([B, T, V'] with all_logits)."""
        B, T = len(prompts), max(len(p) for p in prompts)
        dev = prompts[0].device
        self.pad = torch.tensor([T - len(p) for p in prompts], device=dev)
        ids = torch.zeros(B, T, dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            ids[i, T - len(p):] = p
        self.max_len, self.t = T + max_new, T
        dt = self.model.embedding.embed.weight.dtype
        self.k = [torch.zeros(B, self.kv, self.max_len, self.hd, dtype=dt, device=dev) for _ in self.blocks]
        self.v = [torch.zeros_like(k) for k in self.k]
        pos = (torch.arange(T, device=dev)[None] - self.pad[:, None]).clamp(min=0)
        mask = self.bias = None
        if bool(self.pad.any()):
            # decode steps: additive bias [B, 1, 1, max_len], -inf on each row's padding slots
            slots = torch.arange(self.max_len, device=dev)[None]
            self.bias = torch.zeros(B, 1, 1, self.max_len, dtype=dt, device=dev).masked_fill(
                (slots < self.pad[:, None])[:, None, None], float("-inf"))
            j = torch.arange(T, device=dev)
            # causal, real keys only; a pad query sees itself so its (ignored) row stays finite
            mask = ((j[None, :] <= j[:, None])[None] & (j[None, None, :] >= self.pad[:, None, None])) | torch.eye(T, dtype=torch.bool, device=dev)
            mask = mask[:, None]
        h = self._layers(self.model.embedding.embed(ids), pos, 0, mask, causal=True)
        return self.head(h if all_logits else h[:, -1])

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int64 [B] (the token at slot self.t of every row) -> logits [B, V'] of the next one."""
        t = self.t
        if t >= self.max_len:
            raise RuntimeError(f"KV cache full ({self.max_len} slots): raise max_new in prefill()")
        pos = (t - self.pad)[:, None]
        mask = self.bias[..., :t + 1] if self.bias is not None else None
        h = self._layers(self.model.embedding.embed(ids[:, None]), pos, t, mask, causal=False)
        self.t = t + 1
        return self.head(h[:, 0])

    @torch.no_grad()
    def extend(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int64 [B, S], a block at slots [t, t + S) of every row -> hidden [B, S, H] (before
        `head`). Causal inside the block; a right-padded block is fine (a row's real tokens never see
        the padding after them)."""
        B, S = ids.shape
        t, dev = self.t, ids.device
        if t + S > self.max_len:
            raise RuntimeError(f"KV cache full ({self.max_len} slots): raise max_new in prefill()")
        q = t + torch.arange(S, device=dev)
        slots = torch.arange(t + S, device=dev)
        mask = (slots[None, None] <= q[None, :, None]) & (slots[None, None] >= self.pad[:, None, None])
        h = self._layers(self.model.embedding.embed(ids), q[None] - self.pad[:, None], t, mask[:, None], causal=False)
        self.t = t + S
        return h

    def keep(self, rows: torch.Tensor) -> None:
        """Keep these cache rows, in this order (drop finished rows; a repeated index copies a row)."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.pad = self.pad.index_select(0, rows)
        if self.bias is not None:
            self.bias = self.bias.index_select(0, rows)


def _choose(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, -1)
    if cfg.top_p < 1:
        sp, si = probs.sort(-1, descending=True)
        drop = sp.cumsum(-1) - sp > cfg.top_p  # keep the smallest prefix with mass >= top_p
        sp = sp.masked_fill(drop, 0)
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


@torch.no_grad()
def decode_batch(dec, prompts: list[torch.Tensor], lo: torch.Tensor, hi: torch.Tensor, stop_cols: torch.Tensor,
                 choose, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The one incremental decoding loop (speech generation here, greedy text in megaspeech.eval).
    dec: prefill / step / keep over head rows `rows` (None: the whole vocabulary; logits column j is
    token rows[j]). Per prompt i it picks `choose(logits [B', R]) -> columns` until a stop column (not
    returned) or hi[i] tokens, a stop column being refused before lo[i] tokens. Finished rows leave
    the caches once they are a quarter of the batch. Returns the chosen columns int64 [n_i] per prompt."""
    B = len(prompts)
    logits = dec.prefill(prompts, max(int(hi.max()), 1))
    out = torch.zeros(B, max(int(hi.max()), 1), dtype=torch.long)
    n = torch.zeros(B, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    alive = torch.arange(B)  # prompt of each cache row
    while True:
        na = n[alive]
        logits[:, stop_cols] = logits[:, stop_cols].masked_fill((na < lo[alive])[:, None], float("-inf"))
        col = torch.where(na >= hi[alive], stop_cols[0], choose(logits))
        ends = torch.isin(col, stop_cols)
        wr = ~ends & ~done[alive]
        out[alive[wr], na[wr]] = col[wr]
        n[alive[wr]] += 1
        done[alive] = done[alive] | ends | (n[alive] >= hi[alive])
        d = done[alive]
        if bool(d.all()):
            break
        if int(d.sum()) * 4 >= len(alive):  # compact: finished rows leave the caches
            keep = (~d).nonzero()[:, 0]
            dec.keep(keep)
            alive, col = alive[keep], col[keep]
        logits = dec.step(col if rows is None else rows[col])
    return [out[i, :n[i]] for i in range(B)]


class SpeechGenerator:
    """Text ids -> speech codes with a text-to-token DecoderLM (see module docstring)."""

    def __init__(self, model: DecoderLM, vocab: Vocab, cfg: GenerationConfig, version: str = "unnamed"):
        self.vocab, self.cfg, self.version = vocab, cfg, version
        rows = torch.cat([torch.arange(vocab.speech_offset, vocab.speech_offset + vocab.speech_size),
                          torch.tensor([vocab.eos_speech_id])])
        self.lm, self.rows = KVCacheLM(model, rows), rows
        self.eos = vocab.speech_size  # index of <|end_of_speech|> among the evaluated rows
        self.stats = {"codes": 0, "seconds": 0.0, "spans": 0}

    def prompt(self, text: np.ndarray) -> torch.Tensor:
        v = self.vocab
        return torch.cat([torch.tensor([v.bos_id]), torch.as_tensor(np.asarray(text, np.int64)),
                          torch.tensor([v.bos_speech_id])])

    def generate_batch(self, texts: list[np.ndarray], n_words: list[int], gen: torch.Generator,
                       fixed_len: int | None = None) -> list[np.ndarray]:
        """One batch -> raw codes int64 [C_i]. fixed_len: exactly that many codes, no stop (benchmarks)."""
        cfg = self.cfg
        lims = [cfg.length_limits(w) for w in n_words]
        lo = torch.tensor([fixed_len if fixed_len else a for a, _ in lims])
        hi = torch.tensor([fixed_len if fixed_len else b for _, b in lims])
        cols = decode_batch(self.lm, [self.prompt(t) for t in texts], lo, hi, torch.tensor([self.eos]),
                            lambda logits: _choose(logits, cfg, gen), self.rows)
        return [c.numpy() for c in cols]  # the first speech_size rows are the codes in order

    def generate(self, texts: list[np.ndarray], n_words: list[int], batch_id: int = 0) -> list[np.ndarray]:
        """Any number of spans: sorted by length into batches of generation.batch_size; results in
        input order. Sampling is seeded by (generation.seed, batch_id, batch index)."""
        t0 = time.perf_counter()
        order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
        out: list[np.ndarray | None] = [None] * len(texts)
        bs = self.cfg.batch_size
        for j in range(0, len(order), bs):
            idx = order[j:j + bs]
            gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(
                f"{self.cfg.seed}/{batch_id}/{j}".encode()).digest()[:8], "little") >> 1)
            for i, c in zip(idx, self.generate_batch([texts[i] for i in idx], [n_words[i] for i in idx], gen)):
                out[i] = c
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["codes"] += sum(len(c) for c in out)
        self.stats["spans"] += len(texts)
        return out

    # the interleave.Converter protocol
    def convert(self, texts: list[np.ndarray], n_words: list[int], batch_id: int) -> list[np.ndarray]:
        return self.generate(texts, n_words, batch_id)

    @property
    def codes_per_second(self) -> float:
        return self.stats["codes"] / max(self.stats["seconds"], 1e-9)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint tag dir (holding meta.json), or a run dir / checkpoints root with `latest`."""
    from megaspeech.train.checkpoint import read_latest
    p = Path(path)
    for root in (p, p / "checkpoints"):
        if (root / "meta.json").is_file():
            return root
        if (root / "latest").is_file():
            return root / read_latest(root)
    raise FileNotFoundError(f"{p}: no meta.json or checkpoints/latest; pass a checkpoint written by "
                            f"launch/train_text_to_token.py (its run dir or checkpoints/<tag>)")


def load_decoder(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[DecoderLM, Vocab, str]:
    """Checkpoint of any TP/PP layout -> (DecoderLM at TP=1 in eval mode, its Vocab, version string).
    version = <tag>@<sha256 of meta.json, 12 hex> (meta.json holds step, config and layout)."""
    from megaspeech.config.load import build
    from megaspeech.config.schema import ModelConfig
    from megaspeech.parallel.layers import TorchLayers
    from megaspeech.train.checkpoint import full_state_dict
    ckpt = resolve_checkpoint(path)
    sd, meta = full_state_dict(ckpt)
    mcfg = build(ModelConfig, meta["config"]["model"], "model")
    vocab = Vocab(**meta["vocab"])
    rows = sd["0.embed.weight"].shape[0]
    model = DecoderLM(mcfg, TorchLayers(), rows, seed=0)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (mcfg.tie_embeddings and k.endswith("out.weight"))]
    if missing or unexpected:
        raise ValueError(f"{ckpt}: state dict does not match the model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    digest = hashlib.sha256((ckpt / "meta.json").read_bytes()).hexdigest()[:12]
    return model.to(dtype).eval(), vocab, f"{ckpt.name}@{digest}"

