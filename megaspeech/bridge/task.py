"""task: bridge — the trainer's task (megaspeech/train/task_spec.py's Task protocol, as LMTask for the
token LM): its model, joint loss and loader.

The model is BridgeLM (megaspeech/bridge/model.py): a frame encoder (Whisper tiny.en with its real
weights, or the small conv encoder), the SpeechBridge (CTC compression or strided conv) and the decoder
LM built by the same `build_model` as pre-training (plain layers at TP=1, megatron-core TP layers at
TP>1), initialised from `model.init_from_hf` (SmolLM2-135M-Instruct) before LoRA adapters (peft) are attached.

Loss per micro-batch = the LM loss of megaspeech/train/loss.py on the answer/transcript tokens (scaled
by the global token count, as pre-training) + bridge.ctc_weight x the CTC loss of each row (divided by
its target length) scaled to the mean over the global batch's rows, so every layout (TP, DP, gradient
accumulation) computes the same gradient.
"""
from __future__ import annotations

import functools

import torch

from megaspeech.checkpoint import tp_rules
from megaspeech.config.schema import PretrainConfig
from megaspeech.bridge.layer import SpeechBridge
from megaspeech.bridge.model import BridgeLM, ConvFrames, WhisperFrames, apply_lm_mode
from megaspeech.parallel.parallelize import build_model
from megaspeech.parallel.state import Layout
from megaspeech.train.loss import LMLoss

N_MELS = 80


def make_encoder(kind: str, dim: int, seed: int) -> torch.nn.Module:
    """The frame encoder (bridge.encoder): Whisper tiny.en with its real weights, or the conv encoder
    initialised from `seed` (LaSyn's trainer builds the same one to read its latent space)."""
    if kind == "whisper":
        from megaspeech.speech.whisper_ct2 import load_whisper
        return WhisperFrames(load_whisper().model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 104_729)
        return ConvFrames(N_MELS, dim)


def build_encoder(cfg: PretrainConfig) -> torch.nn.Module:
    return make_encoder(cfg.bridge.encoder, cfg.bridge.encoder_dim, cfg.run.seed)


def build_bridge_model(cfg: PretrainConfig, layout: Layout) -> BridgeLM:
    """Encoder, bridge and LM (HF-initialised, then LoRA / frozen per bridge.lm_mode); the same full
    model at every TP layout for a given seed."""
    b = cfg.bridge
    if b.lm_mode == "lora" and layout.tp > 1:
        raise ValueError("bridge.lm_mode=lora is supported at parallel.tensor=1 (peft adapts plain nn.Linear "
                         "layers); use lm_mode=full or frozen with tensor parallelism")
    lm = build_model(cfg, layout)
    if cfg.model.init_from_hf:
        from megaspeech.checkpoint.hf_import import init_from_hf
        init_from_hf(lm, cfg, layout)
    encoder = build_encoder(cfg)
    from megaspeech.bridge.batches import ctc_units_for
    units = ctc_units_for(b, cfg.vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed + 7_919)
        bridge = SpeechBridge(encoder.dim, cfg.model.hidden_size, kind=b.kind, ctc_vocab=units.size,
                              blank=0, reduce=b.reduce, stride=b.stride, hidden=b.projector_hidden,
                              blank_init=b.ctc_blank_init)
        lm = apply_lm_mode(lm, b.lm_mode, b.lora_rank, b.lora_alpha, tuple(b.lora_targets))  # LoRA A from the seed
    return BridgeLM(encoder, bridge, lm, train_encoder=b.train_encoder,
                    unit_ids=units.token_ids if b.ctc_embed else None)


def load_synthesizer(path: str):
    from megaspeech.bridge.lasyn import load_synthesizer as load
    return load(path)


class BridgeTask:
    """The Task of megaspeech/train/task_spec.py for task: bridge (pipeline=1: no pipeline items; no
    held-out validation)."""

    def __init__(self, cfg: PretrainConfig, layout: Layout):
        self.cfg, self.layout = cfg, layout
        grad_accum = cfg.grad_accum_steps(layout.world)
        self.ctc_scale = grad_accum * layout.dp / cfg.train.global_batch  # per-row sum -> global mean
        self.sums = torch.zeros(5, dtype=torch.float64)  # ctc sum, rows; frames, speech positions, positions

    @functools.cached_property
    def model(self) -> BridgeLM:
        """Built on first use (the trainer's build_model, or a test's / benchmark's `task.model`)."""
        return build_bridge_model(self.cfg, self.layout)

    def build_model(self, loss_fn: LMLoss) -> BridgeLM:
        """The model; its LM loss is applied in micro_loss (no fused head: logits come back)."""
        return self.model

    def universal_checkpoint_info(self) -> dict:
        """The LM's TP rules, with the encoder and bridge replicated on every TP rank."""
        return tp_rules.universal_checkpoint_info(self.cfg.padded_vocab_size(), bridge=True)

    def lr_mult(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter-name prefix (build_optimizer): the encoder side."""
        m = self.cfg.bridge.lr_mult
        return {} if m == 1.0 else {"bridge.": m, "encoder.": m}

    def build_loader(self):
        from megaspeech.bridge.batches import BridgeLoader, ctc_units_for
        cfg, lay = self.cfg, self.layout
        synth = load_synthesizer(cfg.bridge.lasyn) if cfg.bridge.lasyn_ratio > 0 else None
        units = ctc_units_for(cfg.bridge, cfg.vocab)
        return BridgeLoader(cfg.bridge, units.codec, micro_batch=cfg.train.micro_batch, dp_rank=lay.dp_rank,
                            dp_size=lay.dp, seed=cfg.run.seed, n_mels=N_MELS, synthesizer=synth, units=units)

    def begin_step(self) -> None:
        self.sums.zero_()

    def micro_loss(self, engine, batch: dict, device, lm_loss) -> torch.Tensor:
        """One micro-batch's joint loss (to backward)."""
        logits, target, ctc, counts = engine({k: v.to(device) for k, v in batch.items()})
        loss = lm_loss(logits, target)
        self.sums[2:] += counts.cpu()
        if ctc is not None:
            self.sums[:2] += torch.tensor([float(ctc.detach().sum()), ctc.numel()], dtype=torch.float64)
            if self.cfg.bridge.ctc_weight > 0:
                loss = loss + self.cfg.bridge.ctc_weight * self.ctc_scale * ctc.sum()
        return loss

    def metrics(self, all_reduce, owner: bool) -> dict:
        """Step metrics beyond the LM loss: the CTC loss (mean per row over the global batch), the
        sequence-length reduction of the bridge (encoder frames / speech positions) and the LM
        positions (speech + text) of the step."""
        s = all_reduce(self.sums.clone() if owner else torch.zeros_like(self.sums))
        return {"loss_ctc": float(s[0] / s[1]) if s[1] > 0 else None,
                "length_reduction": float(s[2] / s[3]) if s[3] > 0 else None, "lm_positions": float(s[4])}

    def pipe_item(self, batch: dict, device, non_blocking: bool = False):
        raise ValueError("task: bridge runs with parallel.pipeline=1 (TP and DP are supported)")

    def validation_batches(self, grad_accum: int) -> list[list[dict]]:
        raise ValueError("task: bridge has no held-out loss during training (eval.interval); set eval.interval=0")

    def val_forward(self, engine, batch: dict, device, loss_fn: LMLoss) -> None:
        raise ValueError("task: bridge has no held-out loss during training; set eval.interval=0")
