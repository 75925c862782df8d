"""The trainer: one DeepSpeed engine (plain or pipeline), one data loader, one readable train_step.
What differs between tasks (the model, its data, the forward of a micro-batch) is the task object's
(megaspeech/train/task_spec.py: LMTask, or the bridge's BridgeTask)."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from megaspeech import accounting
from megaspeech.config.deepspeed import deepspeed_config
from megaspeech.config.schema import PretrainConfig
from megaspeech.data.prefetch import Prefetcher, StepData, read_step
from megaspeech.parallel.state import Layout, MegatronMPU
from megaspeech.checkpoint import engine as ckpt
from megaspeech.checkpoint import offline
from megaspeech.train.data_plan import current_plan, keep_data_position
from megaspeech.train.loss import MODALITIES, LMLoss
from megaspeech.train.metrics import MetricsLogger, peak_tflops
from megaspeech.train.run_lock import claim_run_dir
from megaspeech.train.schedule import build_optimizer
from megaspeech.train.stop import StopRequests
from megaspeech.train.task_spec import Task

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: PretrainConfig, layout: Layout, task: Task, backends=()):
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        self.cfg, self.layout, self.task = cfg, layout, task
        self.device = torch.device(get_accelerator().current_device_name())
        self.run_dir = Path(cfg.run.dir)
        claim_run_dir(self.run_dir)  # one training per run dir (launch/pretrain.py took it already)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.grad_accum = cfg.grad_accum_steps(layout.world)
        self.loss_fn = LMLoss(layout.tp)
        model = task.build_model(self.loss_fn)
        # fused AdamW on CUDA: one kernel per step instead of ~a dozen elementwise passes per tensor
        optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.steps, fused=self.device.type == "cuda",
                                               lr_mult=task.lr_mult())
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, layout.world), mpu=MegatronMPU() if layout.pp == 1 else None)
        self.loader = task.build_loader()
        self.step = self.consumed_samples = self.consumed_tokens = self.skipped_steps = 0
        self.is_logger = layout.rank == 0
        self.metrics = MetricsLogger(self.run_dir, self.is_logger, backends)
        self.flops_per_token = accounting.flops_per_token(cfg)
        self.peak = peak_tflops(cfg.train.peak_tflops) * 1e12
        self._stop = StopRequests()  # SIGTERM / SIGINT / SIGUSR1 / the launcher's exit
        self._saved_step = None  # the step whose checkpoint this run dir holds (no second save at the end)
        # Fault-injection hook for tests: a NaN loss at this step (pipeline=1 only).
        self._nan_step = int(os.environ.get("MEGASPEECH_INJECT_NAN_STEP", "0"))
        self._data_iter = None  # synchronous reads (train.prefetch=0)
        self._prefetch: Prefetcher | None = None
        self._consumed: StepData | None = None  # the last step's data, whose loader state a checkpoint holds
        self._val_batches = None  # built on first use (eval.sources read once)

    # ---- resumable state -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed_samples,
                "consumed_tokens": self.consumed_tokens, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, sd: dict) -> None:
        for k in self.state_dict():
            setattr(self, k, sd[k])

    def save(self) -> str:
        """Collective checkpoint of everything needed to continue exactly (megaspeech/checkpoint/engine.py)."""
        cfg = self.cfg
        client = {"trainer": self.state_dict(), "config": dataclasses.asdict(cfg),
                  "vocab": cfg.vocab.layout(), "layout": dataclasses.asdict(self.layout),
                  # TP slicing rules for DeepSpeed's universal-checkpoint converter (resharding)
                  "universal_checkpoint_info": self.task.universal_checkpoint_info()}
        rank_state = {"rng": ckpt.rng_state(), "data": self.data_state(), "dp_rank": self.layout.dp_rank}
        meta = {"step": self.step, "layout": client["layout"], "config": client["config"], "vocab": client["vocab"],
                "data_plan": current_plan(cfg)}  # what the saved data position means (compared on resume)
        crash = os.environ.get("MEGASPEECH_CRASH_IN_SAVE") == str(self.step)
        tag = ckpt.save(self.engine, self.ckpt_root, self.step, client, rank_state, cfg.checkpoint.keep,
                        meta=meta, crash_after_write=crash)
        self._saved_step = self.step
        return tag

    def maybe_resume(self) -> None:
        """run.resume: auto (RUN_DIR/checkpoints/latest if any), none, or a checkpoint directory. A
        checkpoint of another TP/PP/DP layout is resharded through a universal checkpoint."""
        policy = self.cfg.run.resume
        if policy == "none":
            held = offline.step_dirs(self.ckpt_root)
            if held:  # starting over would mix two runs' checkpoints and let pruning delete the new ones
                raise ckpt.CheckpointError(
                    f"run.resume=none but {self.ckpt_root} already holds checkpoints ({', '.join(held[:3])}"
                    f"{', ...' if len(held) > 3 else ''}); resume them with run.resume=auto, or start "
                    f"fresh in another run.dir (or move {self.ckpt_root} away yourself)")
            return
        if policy == "auto":  # `latest`, else the newest checkpoint that verifies (skips are logged)
            root, tag = self.ckpt_root, offline.find_resumable(self.ckpt_root)
            if tag is None:
                return
        else:  # a step dir, or another run's (checkpoints) dir: its latest
            step_dir = offline.resolve(policy)
            root, tag = step_dir.parent, step_dir.name
            problems = offline.verify_collective(step_dir)
            if problems:
                raise ckpt.CheckpointError(f"run.resume={policy}: {step_dir} does not verify against its "
                                           f"meta.json: {'; '.join(problems)}; resume from another checkpoint")
        meta = offline.read_meta(root / tag)
        check_compatible(self.cfg, meta, root / tag)  # before any weight is read
        keep_data = keep_data_position(self.cfg, meta, root / tag, self.is_logger)
        client, rank_state = ckpt.load(self.engine, root, tag, self.layout,
                                       universal_root=self.run_dir / "checkpoints_universal")
        self.load_state_dict(client["trainer"])
        if root == self.ckpt_root:
            self._saved_step = self.step
        ckpt.set_rng_state(rank_state["rng"])
        saved = meta["layout"]
        # Same DP size: this rank's own position. Another DP size (elastic): every saved DP rank's
        # position, from which the loader deals the unread remainder out to the new ranks.
        if keep_data:
            self.loader.load_state_dict(rank_state["data"] if saved["dp"] == self.layout.dp
                                        else offline.data_states(root / tag, saved))
        if self.is_logger:
            log.info("resumed from %s at step %d", root / tag, self.step)

    def data_state(self):
        """The loader position after the last consumed step (prefetched batches are not consumed)."""
        return self._consumed.state if self._consumed is not None else self.loader.state_dict()

    # ---- training ----------------------------------------------------------------------------
    def _all_reduce(self, t: torch.Tensor, group=None, op=dist.ReduceOp.SUM, to_host: bool = True) -> torch.Tensor:
        t = t.to(self.device)
        dist.all_reduce(t, op=op, group=group)
        return t.cpu() if to_host else t

    def train_step(self, micro_batches: list[dict], local_tokens: float | None = None) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns the step's metrics.

        The step reads no device value until its end (one host synchronization, for the metrics):
        the global token count stays a device tensor inside the loss scale, the batches are copied
        without blocking (pinned by the prefetcher), the per-modality sums are read once."""
        from megatron.core import parallel_state as ps
        lay = self.layout
        if local_tokens is None:  # host tensors: no device synchronization
            local_tokens = float(sum(b["loss_mask"].sum(dtype=torch.float64) for b in micro_batches))
        global_tokens = self._all_reduce(torch.tensor(local_tokens, dtype=torch.float64),
                                         ps.get_data_parallel_group(), to_host=False)
        self.loss_fn.begin_step(1.0, self.grad_accum, lay.dp)  # zeroes the sums; the scale is set next
        # = grad_accum * dp / max(global_tokens, 1), kept on the device (the loss multiplies by it)
        self.loss_fn.scale = (self.grad_accum * lay.dp) / global_tokens.clamp(min=1.0)
        self.task.begin_step()
        group = self.engine.optimizer.param_groups[0]  # optim.lr's group, or (LM frozen) a multiple of it
        lr = group["lr"] / group.get("lr_mult", 1.0)
        if lay.pp > 1:
            items = [self.task.pipe_item(b, self.device, non_blocking=True) for b in micro_batches]
            self.engine.train_batch(data_iter=iter(items))
        else:
            for b in micro_batches:
                loss = self.task.micro_loss(self.engine, b, self.device, self.loss_fn)
                if self.step + 1 == self._nan_step:
                    loss = loss * float("nan")
                    self.loss_fn.sums[0] = float("nan")
                self.engine.backward(loss)
                self.engine.step()
        owner, _, mean_loss, per_modality = self._reduced_losses("loss")
        out = {"loss": mean_loss, "lr": lr, **per_modality, **self.task.metrics(self._all_reduce, owner)}
        gn = self.engine.get_global_grad_norm()
        out["grad_norm"] = float(gn) if gn is not None else None
        return out

    def validate(self) -> dict:
        """Held-out loss on the same fixed rows at every call (megaspeech/train/validate.py), overall
        and per modality: val_loss, val_loss_text, val_loss_speech. No gradient, no optimizer step;
        the training loader is not touched and the RNG state is restored, so enabling validation
        changes neither the training losses nor the data position."""
        lay = self.layout
        if self._val_batches is None:
            self._val_batches = self.task.validation_batches(self.grad_accum)
        rng = ckpt.rng_state()
        self.loss_fn.begin_step(1.0, 1, 1)  # only the detached per-modality sums are used
        for group in self._val_batches:
            if lay.pp > 1:
                items = [self.task.pipe_item(b, self.device) for b in group]
                self.engine.eval_batch(iter(items), num_micro_batches=len(group))
                continue
            self.engine.module.eval()
            with torch.no_grad():
                for b in group:
                    self.task.val_forward(self.engine, b, self.device, self.loss_fn)
        self.engine.module.train()
        ckpt.set_rng_state(rng)
        _, sums, mean_loss, per_modality = self._reduced_losses("val_loss")
        return {"val_loss": mean_loss, "val_tokens": int(sums[1::2].sum()), **per_modality}

    def _reduced_losses(self, name: str) -> tuple[bool, torch.Tensor, float, dict]:
        """The loss function's per-modality sums summed over ranks -> (owner, sums, mean loss,
        {name_<modality>: mean or None}). The sums live on the last stage (identical on its TP ranks):
        only its TP rank 0 (the owner) contributes them, so they count once."""
        lay = self.layout
        owner = lay.pp_rank == lay.pp - 1 and lay.tp_rank == 0
        sums = self._all_reduce(self.loss_fn.sums.clone() if owner else torch.zeros_like(self.loss_fn.sums))
        per = {f"{name}_{m}": float(sums[2 * i] / sums[2 * i + 1]) if sums[2 * i + 1] > 0 else None
               for i, m in enumerate(MODALITIES)}
        return owner, sums, float(sums[0::2].sum() / max(sums[1::2].sum(), 1.0)), per

    def _next_step_data(self) -> StepData | None:
        """This step's micro-batches: from the prefetch thread (train.prefetch > 0) or read now. None
        (on every rank) once any rank's data is exhausted."""
        pin = self.device.type == "cuda"
        try:
            if self.cfg.train.prefetch > 0:
                if self._prefetch is None:  # started lazily: after maybe_resume positioned the loader
                    self._prefetch = Prefetcher(self.loader, self.grad_accum, self.cfg.train.prefetch, pin)
                data = self._prefetch.next()
            else:
                if self._data_iter is None:
                    self._data_iter = iter(self.loader)
                data = read_step(self._data_iter, self.loader, self.grad_accum, pin)
        except StopIteration:
            data = None
        # ranks must agree before the step's collectives, or the ones with data would wait forever
        if self._all_reduce(torch.tensor([data is None], dtype=torch.int32), op=dist.ReduceOp.MAX).item():
            return None
        self._consumed = data
        batches = data.batches
        if os.environ.get("MEGASPEECH_LOG_SAMPLES"):  # test hook: sample ids per step, per rank
            ids = [int(i) for b in batches for i in b["sample_ids"].flatten() if i >= 0]
            with open(self.run_dir / f"samples_rank{self.layout.rank}.jsonl", "a") as fh:
                fh.write(json.dumps({"step": self.step + 1, "sample_ids": ids}) + "\n")
        return data

    def _next_micro_batches(self) -> list[dict] | None:
        data = self._next_step_data()
        return None if data is None else data.batches

    def close_data(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

    def _end_of_data(self) -> None:
        """The data ran out before train.steps (every source had `epochs` set): save and stop."""
        cfg = self.cfg
        if self.step == 0:
            raise RuntimeError("the data yielded no batch at all: every source is empty or exhausted "
                               "(data.sources epochs, or a resumed position at the end); check data.sources")
        if not (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0):
            self.save()
        if self.is_logger:
            log.warning("data exhausted after step %d of train.steps=%d (every source finished its epochs): "
                        "checkpoint %s saved, stopping. Add data or raise data.sources[].epochs, then resume",
                        self.step, cfg.train.steps, self.ckpt_root / offline.tag_for(self.step))

    def _save_due(self) -> bool:
        c = self.cfg
        return bool(c.checkpoint.interval and self.step % c.checkpoint.interval == 0) or \
            (self.step == c.train.steps and c.checkpoint.save_at_end)

    def _save_then_log(self, record: dict | None, due: bool) -> None:
        """The step's record goes to metrics.jsonl after its checkpoint (when one is due): a kill inside
        the save leaves no record of a step that was never saved (a resume redoes it and logs it once).
        A save that fails cleanly (CheckpointError, on every rank) still logs the step it trained."""
        try:
            if due:
                self.save()
        except ckpt.CheckpointError:
            if record is not None:
                self.metrics.log(record)
            raise
        if record is not None:
            self.metrics.log(record)

    def fit(self) -> None:
        try:
            self._fit()
        finally:  # also on errors (non-finite loss, data errors): stop the prefetch and launcher threads
            self.close_data()
            self._stop.close()

    def _fit(self) -> None:
        cfg = self.cfg
        self._stop.install()
        self.maybe_resume()
        bar = None
        if self.is_logger and cfg.train.progress_bar:
            from tqdm import tqdm
            bar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", dynamic_ncols=True)
        tokens_per_step = cfg.train.global_batch * cfg.train.seq_len
        while self.step < cfg.train.steps:
            t0 = time.perf_counter()
            data = self._next_step_data()
            if data is None:
                self._end_of_data()
                break
            t_data = time.perf_counter() - t0
            out = self.train_step(data.batches, data.tokens)
            dt = time.perf_counter() - t0
            self.step += 1
            self.consumed_samples += cfg.train.global_batch
            self.consumed_tokens += tokens_per_step
            nonfinite = not math.isfinite(out["loss"])
            self.skipped_steps += nonfinite
            tps = tokens_per_step / dt
            record = {"step": self.step, **out, "tokens_per_s": tps,
                      "mfu": self.flops_per_token * tps / (self.peak * self.layout.world),
                      "consumed_samples": self.consumed_samples, "consumed_tokens": self.consumed_tokens,
                      "skipped_steps": self.skipped_steps, "data_wait_s": t_data, "step_time_s": dt}
            record.update(data.stats)  # the loader's counters as of this step's batches
            if cfg.eval.interval and self.step % cfg.eval.interval == 0:
                record.update(self.validate())
            log_it = self.step % cfg.train.log_interval == 0 or self.step == cfg.train.steps or "val_loss" in record
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}", tok_s=f"{tps:.0f}", mfu=f"{record['mfu']:.3f}")
            if nonfinite and not cfg.train.skip_nonfinite:
                self.metrics.log(record)
                latest = offline.read_latest_quiet(self.ckpt_root)
                raise NonFiniteLoss(
                    f"non-finite loss {out['loss']} at step {self.step}; last good checkpoint: "
                    f"{self.ckpt_root / latest if latest else 'none'} (set train.skip_nonfinite=true to skip such steps)")
            stop = self._all_reduce(torch.tensor([self._stop.signal]), op=dist.ReduceOp.MAX).item()
            self._save_then_log(record if log_it else None, due=bool(stop) or self._save_due())
            if stop:
                log.warning("signal %d: checkpoint saved at step %d, exiting for requeue", stop, self.step)
                break
        else:
            if cfg.checkpoint.save_at_end and self._saved_step != self.step:  # train.steps=0 too
                self.save()
        if bar is not None:
            bar.close()
        self.metrics.close()


def check_compatible(cfg: PretrainConfig, client: dict, where: Path) -> None:
    """A checkpoint of another vocabulary or model shape fails naming the differing field."""
    from megaspeech.vocab import Vocab
    cfg.vocab.check_same(Vocab(**client["vocab"]), f"checkpoint {where}")
    saved = client["config"]["model"]
    # every field that changes a tensor's shape (vocab_multiple: the padded embedding rows)
    for k in ("family", "num_layers", "hidden_size", "ffn_hidden_size", "num_heads", "num_kv_heads",
              "qkv_bias", "tie_embeddings", "rope_fraction", "vocab_multiple"):
        if k in saved and saved[k] != getattr(cfg.model, k):
            raise ValueError(f"checkpoint {where} has model.{k}={saved[k]!r} but this run has "
                             f"model.{k}={getattr(cfg.model, k)!r}; use the checkpoint's model shape")
