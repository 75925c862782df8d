"""Incremental decoding with a KV cache for DecoderLM weights (TP=1, one process).

`KVCacheLM` is a small inference module: it calls the model's own submodules (embedding, norms,
qkv / proj / MLP linears) on [B, S, H] activations and keeps per-layer key/value caches, so no
inference path is added to model/llm.py and no weights are copied (except the output rows it is
restricted to, gathered once). Prompts of different lengths are left-padded: padded keys are masked
and RoPE positions start at each row's first real token, so a row's result does not depend on the
padding (up to float summation order). `decode_batch` samples (greedy, temperature, top-p) with
per-row minimum and maximum lengths and stop columns; its `cfg` needs `temperature` and `top_p`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from megaspeech.model.llm import DecoderLM, apply_rope, rope_tables


class KVCacheLM:
    """Incremental decoding over a DecoderLM's modules. `out_rows`: vocabulary rows the head is
    evaluated on (None = all); logits come back in that order."""

    def __init__(self, model: DecoderLM, out_rows: torch.Tensor | None = None):
        self.model = model.eval()
        self.blocks = model.blocks
        a = self.blocks[0].attn
        self.kv, self.group, self.heads, self.hd = a.kv, a.group, a.heads, a.hd
        self.rot_dim, self.theta, self.interleaved, self.scaling = a.rot_dim, a.theta, a.interleaved, a.scaling
        w = model.head.out.weight
        self.w_out = w if out_rows is None else w.detach()[out_rows].contiguous()

    # -- internals ---------------------------------------------------------------------------
    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos int64 [B, S] -> cos, sin [B, 1, S, rot/2]."""
        cos, sin = rope_tables(self.max_len, self.rot_dim, self.theta, pos.device, self.scaling)
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


def choose(logits: torch.Tensor, cfg, gen: torch.Generator) -> torch.Tensor:
    """Next token per row of logits [B, V]: greedy at cfg.temperature=0, else sampled (top-p)."""
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
