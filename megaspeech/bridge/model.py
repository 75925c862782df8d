"""The continuous-speech LM (arXiv 2312.03668; SALM's model shape): frame encoder -> bridge -> decoder LM.

    feats [B, n_mels, F] (log-mel) --encoder--> frames [B, T, D] (any module: forward(feats, lengths)
    -> (frames, lengths), attribute `dim`)  (or LaSyn latents given directly, same space)
      --SpeechBridge (CTC head + ctc_compress, or strided conv) + projector--> [B, T', H]
      --splice before the text--> DecoderLM(embeds=...) -> logits [S, B, V / tp]

Text per row: `prefix` tokens (prompt or question; no loss) then `target` tokens (transcript or
answer, then eos; loss). Labels are laid out on the spliced sequence here, because T' (the compressed
speech length) is only known after the bridge has run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megaspeech.bridge.layer import BridgeOutput, SpeechBridge, splice
from megaspeech.speech.asr import additive_mask

CTC_CHARS = " abcdefghijklmnopqrstuvwxyz'"  # CTC units: index + 1 (0 is the blank)


def unit_token_ids(encode) -> list[int]:
    """The LM token of each CTC unit (blank first: -1) for bridge.ctc_embed: `encode(str) -> ids` of the
    LM's tokenizer; a unit it spells with several tokens takes the last (SentencePiece's word marker first)."""
    out = [-1]
    for ch in CTC_CHARS:
        ids = list(encode(ch))
        out.append(int(ids[-1]) if ids else -1)
    return out


def ctc_units(text: str) -> list[int]:
    """Transcript -> character units for the CTC head (lowercase letters, space, apostrophe; others dropped)."""
    out, prev_space = [], True
    for ch in text.lower():
        ch = " " if not ch.isalpha() and ch != "'" else ch
        if ch not in CTC_CHARS or (ch == " " and prev_space):
            continue
        out.append(CTC_CHARS.index(ch) + 1)
        prev_space = ch == " "
    while out and out[-1] == 1:
        out.pop()
    return out


def _stem_lengths(lengths: torch.Tensor) -> torch.Tensor:
    return torch.div(lengths + 1, 2, rounding_mode="floor")  # conv k3 s2 p1


class WhisperFrames(nn.Module):
    """The Whisper encoder (conv stem, layers, final norm) on each utterance's own mel frames, 50 Hz.

    The modules of a transformers WhisperForConditionalGeneration are reused (real weights of
    megaspeech.speech.whisper_ct2.load_whisper). feats [B, n_mels, F], lengths int64 [B] (mel frames)
    -> (frames [B, ceil(F/2), D], lengths [B]); padding frames are masked out of attention.
    """

    def __init__(self, whisper_model):
        super().__init__()
        enc = whisper_model.model.encoder
        self.conv1, self.conv2, self.embed_positions = enc.conv1, enc.conv2, enc.embed_positions
        self.layers, self.layer_norm = enc.layers, enc.layer_norm
        self.dim = enc.config.d_model

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        real = torch.arange(feats.shape[-1], device=feats.device)[None, :] < lengths[:, None]
        x = F.gelu(self.conv2(F.gelu(self.conv1(feats * real[:, None, :])))).transpose(1, 2)
        x = x + self.embed_positions.weight[:x.shape[1]]
        out_len = _stem_lengths(lengths)
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < out_len[:, None]
        mask = additive_mask(keep, x.dtype).to(x.device)
        for layer in self.layers:
            x = layer(x, mask)
        return self.layer_norm(x) * keep[..., None], out_len


class ConvFrames(nn.Module):
    """A small randomly initialised encoder with Whisper's frame rate (conv k3 + conv k3 stride 2 + MLP):
    the stand-in for tests and smoke runs, same interface as WhisperFrames."""

    def __init__(self, n_mels: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.dim = dim

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        real = torch.arange(feats.shape[-1], device=feats.device)[None, :] < lengths[:, None]
        x = F.gelu(self.conv2(F.gelu(self.conv1(feats * real[:, None, :])))).transpose(1, 2)
        x = x + self.mlp(x)
        out_len = _stem_lengths(lengths)
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < out_len[:, None]
        return x * keep[..., None], out_len


def merge_rows(a: torch.Tensor, a_len: torch.Tensor, b: torch.Tensor, b_len: torch.Tensor, use_b: torch.Tensor):
    """Per row: frames of `a` or (where use_b) of `b`, zero-padded to the longer -> (frames, lengths)."""
    T = max(a.shape[1], b.shape[1])
    a = F.pad(a, (0, 0, 0, T - a.shape[1]))
    b = F.pad(b.to(a.dtype), (0, 0, 0, T - b.shape[1]))
    return torch.where(use_b[:, None, None], b, a), torch.where(use_b, b_len, a_len)


class BridgeLM(nn.Module):
    """encoder + SpeechBridge + DecoderLM (or a peft model wrapping it). forward(batch) ->
    (logits [S, B, V/tp], (labels, loss_mask, modality) [B, S], ctc loss per row [B] or None,
    counts float64 [3]: encoder frames, bridge outputs (speech positions), all positions of the rows)."""

    def __init__(self, encoder: nn.Module, bridge: SpeechBridge, lm: nn.Module, train_encoder: bool = False,
                 unit_ids: list[int] | None = None):
        super().__init__()
        self.encoder, self.bridge, self.lm = encoder, bridge, lm
        self.train_encoder = train_encoder
        # bridge.ctc_embed: the LM token of each CTC unit (-1: none, the blank); rebuilt, not saved
        self.register_buffer("unit_ids", None if unit_ids is None else torch.tensor(unit_ids), persistent=False)
        if not train_encoder:
            for p in encoder.parameters():
                p.requires_grad_(False)

    def decoder(self) -> nn.Module:
        """The DecoderLM itself (under a peft wrapper when LoRA is on)."""
        lm = self.lm
        return lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    def frames(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder frames of the real-speech rows; rows with `latent_lengths` > 0 take the given latents."""
        feats, f_len = batch["feats"], batch["feat_lengths"]
        feats = feats.to(self.bridge.proj[0].weight.dtype)  # the model's dtype (bf16 under train.precision=bf16)
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            h, h_len = self.encoder(feats, f_len)
        if "latents" in batch:
            h, h_len = merge_rows(h, h_len, batch["latents"], batch["latent_lengths"], batch["latent_lengths"] > 0)
        return h, h_len

    def unit_embeds(self) -> torch.Tensor | None:
        """[V_ctc, H]: the LM's input embeddings of the CTC units' tokens (zero rows where none), or None."""
        if self.unit_ids is None:
            return None
        e = self.embed_text(self.unit_ids.clamp(min=0)[None])[0]
        return e * (self.unit_ids >= 0)[:, None].to(e.dtype)

    def speech(self, batch: dict) -> tuple[BridgeOutput, torch.Tensor, torch.Tensor]:
        h, h_len = self.frames(batch)
        return self.bridge(h, h_len, self.unit_embeds()), h, h_len

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, U] -> [B, U, H] through the LM's (possibly vocab-parallel) embedding."""
        return self.decoder().embedding(ids).transpose(0, 1)

    def forward(self, batch: dict):
        out, h, h_len = self.speech(batch)
        ids, n_text, tmask = batch["text_ids"], batch["text_lengths"], batch["loss_mask"]
        embeds, _ = splice(out, self.embed_text(ids), n_text)
        logits = self.lm(None, embeds=embeds)
        labels, mask = spliced_targets(out.lengths, ids, n_text, tmask, embeds.shape[0])
        ctc = None
        if self.bridge.kind == "ctc":
            logp = out.ctc_logits.float().log_softmax(-1).transpose(0, 1)
            ctc = F.ctc_loss(logp, batch["ctc_targets"], h_len, batch["ctc_lengths"], blank=self.bridge.blank,
                             reduction="none", zero_infinity=True) / batch["ctc_lengths"].clamp(min=1)
        counts = torch.stack([h_len.sum(), out.lengths.sum(), out.lengths.sum() + n_text.sum()]).double()
        return logits, (labels, mask, torch.zeros_like(labels)), ctc, counts  # every label is text


def spliced_targets(n_speech: torch.Tensor, ids: torch.Tensor, n_text: torch.Tensor, tmask: torch.Tensor,
                    S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token labels and loss mask [B, S] of the spliced rows [speech x n_speech, text x n_text]:
    position n_speech + j - 1 predicts text token j (counted where tmask[j] is 1; j >= 1, the first
    text token being the prompt's start)."""
    B, U = ids.shape
    labels = torch.zeros(B, S, dtype=torch.long, device=ids.device)
    mask = torch.zeros(B, S, dtype=torch.float32, device=ids.device)
    for i in range(B):
        n, m = int(n_speech[i]), int(n_text[i])
        labels[i, n:n + m - 1] = ids[i, 1:m]
        mask[i, n:n + m - 1] = tmask[i, 1:m].float()
    return labels, mask


def apply_lm_mode(lm: nn.Module, mode: str, rank: int = 8, alpha: float = 16.0, targets=("qkv", "proj")) -> nn.Module:
    """full: unchanged; frozen: every LM weight fixed; lora: the LM wrapped by peft with LoRA adapters on
    the named linears (only the adapters train). Returns the module to use as the LM."""
    if mode == "full":
        return lm
    for p in lm.parameters():
        p.requires_grad_(False)
    if mode == "frozen":
        return lm
    if mode != "lora":
        raise ValueError(f"bridge.lm_mode={mode!r}: use full, frozen or lora")
    from peft import LoraConfig, get_peft_model
    names = {n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"bridge.lora_targets {missing} name no nn.Linear of the LM (it has {sorted(names)}); "
                         f"LoRA needs parallel.tensor=1")
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
    return get_peft_model(lm, cfg)


def merged_lm(model: BridgeLM) -> nn.Module:
    """The DecoderLM with LoRA adapters merged into its weights (a plain model for export); the LM
    itself when no adapter is attached. Works on a copy: `model` keeps its adapters."""
    import copy
    lm = copy.deepcopy(model.lm)
    return lm.merge_and_unload() if hasattr(lm, "merge_and_unload") else lm


class _PrefixKVCache:
    """megaspeech.synth.generate.KVCacheLM prefilled with embeddings (speech + prompt) instead of ids."""

    def __init__(self, lm: nn.Module):
        from megaspeech.model.decode import KVCacheLM
        self.kv = KVCacheLM(lm)

    def prefill(self, rows: list[torch.Tensor], max_new: int) -> torch.Tensor:
        """rows: [T_i, H] per sequence, left-padded here -> logits [B, V] of each row's last position."""
        kv = self.kv
        B, T, H = len(rows), max(r.shape[0] for r in rows), rows[0].shape[1]
        dev, dt = rows[0].device, rows[0].dtype
        kv.pad = torch.tensor([T - r.shape[0] for r in rows], device=dev)
        x = torch.zeros(B, T, H, dtype=dt, device=dev)
        for i, r in enumerate(rows):
            x[i, T - r.shape[0]:] = r
        kv.max_len, kv.t = T + max_new, T
        kv.k = [torch.zeros(B, kv.kv, kv.max_len, kv.hd, dtype=dt, device=dev) for _ in kv.blocks]
        kv.v = [torch.zeros_like(k) for k in kv.k]
        pos = (torch.arange(T, device=dev)[None] - kv.pad[:, None]).clamp(min=0)
        slots = torch.arange(kv.max_len, device=dev)[None]
        kv.bias = torch.zeros(B, 1, 1, kv.max_len, dtype=dt, device=dev).masked_fill(
            (slots < kv.pad[:, None])[:, None, None], float("-inf"))
        j = torch.arange(T, device=dev)
        mask = ((j[None, :] <= j[:, None])[None] & (j[None, None, :] >= kv.pad[:, None, None])) | torch.eye(T, dtype=torch.bool, device=dev)
        return kv.head(kv._layers(x, pos, 0, mask[:, None], causal=True)[:, -1])


@torch.no_grad()
def greedy_generate(model: BridgeLM, batch: dict, eos_id: int, max_new_tokens: int = 64) -> list[list[int]]:
    """Greedy continuation after each row's speech + prefix (batch["text_ids"][:, :text_lengths]) with a
    KV cache over the LM (LoRA merged first). TP=1. Returns the new token ids per row (eos excluded)."""
    out, _, _ = model.speech(batch)
    ids, n_text = batch["text_ids"], batch["text_lengths"]
    text = model.embed_text(ids)
    rows = [torch.cat([out.embeds[i, :int(out.lengths[i])], text[i, :int(n_text[i])]]) for i in range(ids.shape[0])]
    lm = merged_lm(model) if hasattr(model.lm, "merge_and_unload") else model.decoder()
    cache = _PrefixKVCache(lm)
    logits = cache.prefill(rows, max_new_tokens)
    new: list[list[int]] = [[] for _ in rows]
    done = torch.zeros(len(rows), dtype=torch.bool)
    for _ in range(max_new_tokens):
        tok = logits.argmax(-1)
        for i in range(len(rows)):
            if not done[i]:
                if int(tok[i]) == eos_id:
                    done[i] = True
                else:
                    new[i].append(int(tok[i]))
        if bool(done.all()) or cache.kv.t >= cache.kv.max_len:
            break
        logits = cache.kv.step(tok)
    return new
