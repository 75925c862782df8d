"""Run by test_doc_mask_layouts.py under torchrun (2 ranks): argv = tensor pipeline.

Builds the trainer (DeepSpeed engine) of the tiny model at that layout with data.document_mask,
takes one synthetic packed micro-batch and checks, on the rank that holds the logits, that every
document's logits in the packed row equal those of the same document run alone (a row holding only
it, at position 0), and that without the mask the packed logits do differ (the check can fail); for
both attention paths, SDPA with a dense mask (CPU's auto) and FlexAttention with a BlockMask (CUDA's).
Exit code 0 = equal; prints `max_diff=` and `unmasked_diff=` per path."""
import os
import sys
import tempfile

import torch
import torch.distributed as dist

from megaspeech.config.load import load_config
from megaspeech.config.schema import PretrainConfig
from megaspeech.model.llm import Attention
from megaspeech.parallel.state import destroy_distributed, init_distributed
from megaspeech.train.task_spec import LMTask
from megaspeech.train.trainer import Trainer


def check(logits_of, batch, attn, layout, tp) -> bool:
    from megatron.core import parallel_state as ps
    ids, doc = batch["input_ids"], batch["doc_ids"]
    S = ids.shape[1]
    packed = logits_of(ids, doc)
    unmasked = logits_of(ids, torch.zeros_like(doc))
    # Each document alone: its tokens at positions 0.., the rest of the row another document.
    spans = [(b, int(d)) for b in range(ids.shape[0]) for d in doc[b].unique()]
    diffs, n_docs = [], 0
    for i in range(0, len(spans), 2):
        pair = spans[i:i + 2] + spans[:1] * (2 - len(spans[i:i + 2]))  # batch shape stays [2, S]
        rows, rdoc, where = [], [], []
        for b, d in pair:
            pos = (doc[b] == d).nonzero().flatten()
            n = len(pos)
            rows.append(torch.cat([ids[b, pos], ids[b, :S - n]]))
            rdoc.append(torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(S - n, dtype=torch.long)]))
            where.append((b, pos))
        alone = logits_of(torch.stack(rows), torch.stack(rdoc))
        if alone is not None:
            for r, (b, pos) in enumerate(where):
                diffs.append((packed[b, pos] - alone[r, :len(pos)]).abs().max().item())
                n_docs += 1
    if packed is not None and (tp == 1 or ps.get_tensor_model_parallel_rank() == 0):
        unmasked_diff = (packed - unmasked).abs().max().item()
        print(f"attention={attn} rank={layout.rank} docs={n_docs} max_diff={max(diffs):.3e} "
              f"unmasked_diff={unmasked_diff:.3e}", flush=True)
        ok = n_docs >= 4 and max(diffs) < 1e-4 and unmasked_diff > 1e-2
    else:
        ok = True
    return ok


def main():
    tp, pp = int(sys.argv[1]), int(sys.argv[2])
    run_dir = tempfile.mkdtemp()
    cfg = load_config(PretrainConfig, "configs/tiny.yaml", [
        f"parallel.tensor={tp}", f"parallel.pipeline={pp}", "data.kind=synthetic",
        "data.document_mask=true", "train.seq_len=160", "train.micro_batch=2", "train.global_batch=2",
        f"run.dir={run_dir}", "train.progress_bar=false"])
    layout = init_distributed(tp, pp)
    trainer = Trainer(cfg, layout, LMTask(cfg, layout))
    engine = trainer.engine
    engine.eval()
    from megatron.core import parallel_state as ps

    def logits_of(ids, doc):
        """[B, S] -> full-vocab logits [B, S, V] on the logits' rank(s), else None."""
        with torch.no_grad():
            if pp == 1:
                out = engine(ids, doc)
            else:
                target = (torch.zeros_like(ids), torch.zeros(ids.shape), torch.zeros_like(ids))
                _, out = engine.eval_batch(iter([((ids, doc), target)]), return_logits=True, compute_loss=False)
                if out is None:
                    return None
            if tp > 1:  # vocab-parallel head: gather the slices
                parts = [torch.empty_like(out) for _ in range(tp)]
                dist.all_gather(parts, out.contiguous(), group=ps.get_tensor_model_parallel_group())
                out = torch.cat(parts, -1)
            return out.transpose(0, 1)

    batch = next(iter(trainer.loader))
    ok = True
    for attn in ("sdpa", "flex"):
        for m in engine.module.modules():
            if isinstance(m, Attention):
                m.impl = attn
        ok &= check(logits_of, batch, attn, layout, tp)
    destroy_distributed()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
