"""The pre-training config: typed sections, validated when loaded (before any process group).

Field reference (docs/config.md mirrors this file):
  run.*         where outputs go, seed, resume policy
  vocab.*       unified token layout (megaspeech.vocab.Vocab)
  model.*       decoder shape (Llama/GLM family)
  parallel.*    tensor / pipeline / sequence parallel sizes and ZeRO stage (DP = world / (TP*PP))
  train.*       steps, sequence length, batch sizes, precision, clipping, activation checkpointing
  optim.*       AdamW and the LR schedule
  data.*        the data pipeline (megaspeech.config.data.DataConfig)
  checkpoint.*  interval, retention, HF init
  metrics.*     jsonl is always written; wandb / TensorBoard mirrors
  task          lm (token LM pre-training) or bridge (speech encoder -> bridge -> LM, megaspeech/config/bridge.py)
  bridge.*      the continuous-speech bridge model and its data (task: bridge)
  eval.*        held-out validation loss every eval.interval steps (megaspeech.train.validate)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from megaspeech.config.bridge import BridgeConfig
from megaspeech.config.load import ConfigError, check
from megaspeech.config.data import DataConfig
from megaspeech.config.hf_shape import resolve_init_from_hf
from megaspeech.config.validation import EvalConfig
from megaspeech.vocab import Vocab


@dataclass
class RunConfig:
    dir: str = "runs/default"
    seed: int = 1234
    resume: str = "auto"  # auto: resume from RUN_DIR/checkpoints/latest if present; none; or a checkpoint dir
    name: str = "megaspeech"
    # a resume whose data plan (seed, sources' datasets, weights, epochs) differs from the checkpoint's:
    # refuse (naming the change), or restart: start the data position over (the model state is kept)
    data_plan_change: Literal["refuse", "restart"] = "refuse"

    def __post_init__(self):
        check(0 <= self.seed < 2**32, "run.seed", f"must be in [0, 2^32), got {self.seed}")
        check(bool(self.resume), "run.resume", "must be auto, none or a checkpoint directory")
        check(self.data_plan_change in ("refuse", "restart"), "run.data_plan_change",
              f"must be refuse or restart, got {self.data_plan_change!r}")


def _positive(value: float, field: str) -> None:
    check(math.isfinite(value) and value > 0, field, f"must be a finite number > 0, got {value}")


@dataclass
class RopeScaling:
    """model.rope_scaling: none, or Llama-3.1's `llama3` frequency scaling (transformers'
    _compute_llama3_parameters; the values of config.json's rope_parameters)."""
    type: Literal["none", "llama3"] = "none"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        for k in ("factor", "low_freq_factor", "high_freq_factor"):
            _positive(getattr(self, k), f"model.rope_scaling.{k}")
        check(self.high_freq_factor > self.low_freq_factor, "model.rope_scaling.high_freq_factor",
              f"must be > low_freq_factor={self.low_freq_factor}")
        check(self.original_max_position_embeddings >= 1, "model.rope_scaling.original_max_position_embeddings",
              "must be >= 1")

    def key(self) -> tuple | None:
        """Hashable parameters for the RoPE tables (None: plain RoPE)."""
        if self.type == "none":
            return None
        return (self.factor, self.low_freq_factor, self.high_freq_factor, self.original_max_position_embeddings)


@dataclass
class ModelConfig:
    """The decoder's shape. With model.init_from_hf set, every field config.json defines (family to
    rope_scaling) is read from it when the YAML leaves it out, and must agree when the YAML sets it
    (megaspeech/config/hf_shape.py)."""
    family: Literal["llama", "qwen2", "mistral", "glm"] = "llama"
    num_layers: int = 4
    hidden_size: int = 256
    ffn_hidden_size: int = 688
    num_heads: int = 8
    num_kv_heads: int = 2
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0  # GLM rotates half of each head (0.5); Llama all of it (1.0)
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    init_std: float = 0.02
    vocab_multiple: int = 128  # embedding rows padded to a multiple of this (layout-independent; % tensor == 0)
    # auto: flash-attn (plain causal) / FlexAttention (document mask) on CUDA, SDPA on CPU; flex: FlexAttention
    attention: Literal["auto", "sdpa", "flash", "flex"] = "auto"
    # HF dir (Llama, Qwen2, Mistral, GLM-4): shape read, weights loaded, speech codes + specials appended
    init_from_hf: str | None = None

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):  # ModelConfig(**saved_dict)
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        check(not (self.family == "mistral" and self.qkv_bias), "model.qkv_bias",
              "MistralForCausalLM has no attention biases; use family llama (attention_bias) or qwen2")
        check(self.num_layers > 0, "model.num_layers", "must be > 0")
        for k in ("hidden_size", "ffn_hidden_size", "num_heads", "num_kv_heads", "vocab_multiple"):
            check(getattr(self, k) >= 1, f"model.{k}", f"must be >= 1, got {getattr(self, k)}")
        for k in ("rope_theta", "norm_eps", "init_std"):
            _positive(getattr(self, k), f"model.{k}")
        check(self.hidden_size % self.num_heads == 0, "model.hidden_size",
              f"{self.hidden_size} is not divisible by model.num_heads={self.num_heads}")
        check(self.num_heads % self.num_kv_heads == 0, "model.num_kv_heads",
              f"model.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        rot = int(self.head_dim * self.rope_fraction)
        check(rot % 2 == 0 and 0 < self.rope_fraction <= 1, "model.rope_fraction",
              f"must give an even rotary dim in (0, head_dim]; got {rot} of head_dim {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    sequence_parallel: bool = False
    zero_stage: int = 1

    def __post_init__(self):
        check(self.tensor >= 1, "parallel.tensor", "must be >= 1")
        check(self.pipeline >= 1, "parallel.pipeline", "must be >= 1")
        check(self.zero_stage in (0, 1, 2, 3), "parallel.zero_stage", f"must be 0-3, got {self.zero_stage}")
        check(not (self.sequence_parallel and self.tensor == 1), "parallel.sequence_parallel",
              "needs parallel.tensor > 1 (it splits the sequence over the tensor-parallel group)")
        check(not (self.pipeline > 1 and self.zero_stage > 1), "parallel.zero_stage",
              f"ZeRO-{self.zero_stage} cannot be combined with parallel.pipeline={self.pipeline}; use 0 or 1")


@dataclass
class TrainConfig:
    steps: int = 100
    seq_len: int = 256
    micro_batch: int = 4
    global_batch: int = 8  # sequences per optimizer step over all data-parallel ranks
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_clip: float = 1.0
    activation_checkpointing: Literal["none", "all"] | list[int] = "none"  # or global layer ids
    skip_nonfinite: bool = False
    compile: bool | Literal["auto"] = "auto"  # torch.compile each block (after TP and AC); auto: CUDA only
    # LM loss in token chunks from the head's input and weight (megaspeech/kernels/linear_cross_entropy.py): no
    # [S, B, V] fp32 logits. Not under ZeRO-3 (the head weight is only gathered inside its forward).
    fused_loss: bool = True
    loss_chunk_tokens: int | None = None  # tokens per loss chunk; None: 32M logits (128 MiB fp32)
    log_interval: int = 1
    peak_tflops: float | None = None  # per device; None: 989 (H100 bf16) on GPU, a measured GEMM peak on CPU
    progress_bar: bool = True
    prefetch: int = 1  # steps of micro-batches read ahead by a background thread (0: read inside the step)

    def compile_enabled(self, device_type: str) -> bool:
        """train.compile resolved for a device type ("cuda", "cpu"). auto compiles on CUDA only: on CPU
        short runs do not repay the compile time (docs/config.md, train.compile)."""
        return self.compile is True or (self.compile == "auto" and device_type == "cuda")

    def __post_init__(self):
        check(self.steps >= 0, "train.steps", "must be >= 0")
        check(self.seq_len > 1, "train.seq_len", "must be > 1")
        check(self.micro_batch >= 1, "train.micro_batch", "must be >= 1")
        check(self.global_batch >= 1, "train.global_batch", "must be >= 1")
        check(self.log_interval >= 1, "train.log_interval", f"must be >= 1 (log every N steps), got {self.log_interval}")
        if self.peak_tflops is not None:
            _positive(self.peak_tflops, "train.peak_tflops")
        check(self.prefetch >= 0, "train.prefetch", "must be >= 0 (0 reads the data inside the step)")
        check(self.global_batch % self.micro_batch == 0, "train.global_batch",
              f"{self.global_batch} must be a multiple of train.micro_batch={self.micro_batch}")
        check(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "train.grad_clip",
              "must be a finite number >= 0 (0 disables clipping)")
        check(self.loss_chunk_tokens is None or self.loss_chunk_tokens >= 1, "train.loss_chunk_tokens",
              f"must be a positive int or null, got {self.loss_chunk_tokens}")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    decay: Literal["linear", "cosine", "constant"] = "cosine"
    decay_steps: int | None = None  # default: train.steps - warmup
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1

    def __post_init__(self):
        _positive(self.lr, "optim.lr")
        _positive(self.eps, "optim.eps")
        check(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.decay_steps is None or self.decay_steps >= 1, "optim.decay_steps", "must be >= 1 or null")
        check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        check(0 <= self.min_lr <= self.lr, "optim.min_lr", f"must be in [0, optim.lr={self.lr}]")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
              "must be two numbers in [0, 1), e.g. [0.9, 0.95]")


@dataclass
class CheckpointConfig:
    interval: int = 0  # steps between saves; 0: only at the end and on SIGTERM/SIGUSR1
    keep: int = 3
    save_at_end: bool = True

    def __post_init__(self):
        check(self.interval >= 0, "checkpoint.interval", f"must be >= 0 (0: only at the end), got {self.interval}")
        check(self.keep >= 0, "checkpoint.keep", f"must be >= 0 (0: keep every checkpoint), got {self.keep}")


@dataclass
class MetricsConfig:
    wandb: Literal["offline", "online", "disabled"] = "offline"
    tensorboard: bool = True
    project: str = "megaspeech"


@dataclass
class PretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    vocab: Vocab = field(default_factory=Vocab)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    task: Literal["lm", "bridge"] = "lm"
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # load_config's fill-in before typing: model.* and vocab.text_size from model.init_from_hf's config.json
    prepare_tree = staticmethod(resolve_init_from_hf)

    def __post_init__(self):
        m, p, t = self.model, self.parallel, self.train
        check(self.task in ("lm", "bridge"), "task", f"{self.task!r}: use lm or bridge")
        if self.task == "bridge":
            check(p.pipeline == 1, "parallel.pipeline", "task: bridge runs with pipeline=1 (TP and DP are supported)")
            check(not p.sequence_parallel, "parallel.sequence_parallel",
                  "task: bridge has data-dependent sequence lengths; set parallel.sequence_parallel=false")
            check(bool(self.bridge.train), "bridge.train", "set the `audio` dataset dir (launch/make_speech_corpus.py)")
        check(m.num_heads % p.tensor == 0, "parallel.tensor",
              f"model.num_heads={m.num_heads} is not divisible by parallel.tensor={p.tensor}")
        check(m.num_kv_heads % p.tensor == 0, "parallel.tensor",
              f"model.num_kv_heads={m.num_kv_heads} is not divisible by parallel.tensor={p.tensor}")
        check(m.ffn_hidden_size % p.tensor == 0, "parallel.tensor",
              f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tensor={p.tensor}")
        check(m.vocab_multiple % p.tensor == 0, "model.vocab_multiple",
              f"{m.vocab_multiple} must be a multiple of parallel.tensor={p.tensor} (vocab rows split over TP)")
        check(m.num_layers % p.pipeline == 0, "parallel.pipeline",
              f"model.num_layers={m.num_layers} is not divisible by parallel.pipeline={p.pipeline}")
        check(not (p.sequence_parallel and t.seq_len % p.tensor), "train.seq_len",
              f"{t.seq_len} must be divisible by parallel.tensor={p.tensor} with sequence parallelism")
        check(not (m.tie_embeddings and p.pipeline > 1), "model.tie_embeddings",
              "tied embeddings are not supported with parallel.pipeline > 1; untie them or use pipeline=1")
        ac = t.activation_checkpointing
        if isinstance(ac, list):
            bad = [i for i in ac if not 0 <= i < m.num_layers]
            check(not bad, "train.activation_checkpointing", f"layer ids {bad} outside [0, {m.num_layers})")

    def padded_vocab_size(self) -> int:
        return self.vocab.padded_size(self.model.vocab_multiple)

    def data_parallel_size(self, world_size: int) -> int:
        """Validate the layout against a world size (before process groups start) and return DP."""
        p, t = self.parallel, self.train
        mp = p.tensor * p.pipeline
        if world_size % mp:
            raise ConfigError(
                f"parallel.tensor x parallel.pipeline = {mp} does not divide the world size {world_size}; "
                f"launch a multiple of {mp} processes or change the layout")
        dp = world_size // mp
        if t.global_batch % (t.micro_batch * dp):
            raise ConfigError(
                f"train.global_batch={t.global_batch} is not a multiple of train.micro_batch x data parallel "
                f"= {t.micro_batch} x {dp}; pick global_batch as a multiple of {t.micro_batch * dp}")
        if p.pipeline > 1 and p.zero_stage > 1:
            raise ConfigError("parallel.zero_stage must be 0 or 1 with pipeline parallelism")
        return dp

    def grad_accum_steps(self, world_size: int) -> int:
        return self.train.global_batch // (self.train.micro_batch * self.data_parallel_size(world_size))
