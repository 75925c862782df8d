"""Run by tests/model/test_hf_families.py under torchrun (2 processes): every family's HF model
imported into the TP=2 model (megatron layers, vocab-parallel head); the gathered logits must equal the
HF model's (fp32, atol 1e-5). argv[1]: a dir holding dirs.json ({family: hf dir}). Exit code 0 = equal."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megaspeech.checkpoint.hf_import import init_from_hf
from megaspeech.config.load import load_config
from megaspeech.config.schema import PretrainConfig
from megaspeech.parallel.cpu_shims import install_cpu_shims
from megaspeech.parallel.parallelize import build_model
from megaspeech.parallel.state import current_layout


def main():
    from megatron.core import parallel_state as ps
    work = Path(sys.argv[1])
    # gloo + megatron's TP groups without deepspeed.init_distributed: its shared-memory all-reduce op
    # costs ~50 s to set up on a loaded 2-core machine, and nothing here needs it
    install_cpu_shims()
    dist.init_process_group("gloo")
    ps.initialize_model_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=1)
    layout = current_layout()
    bad = []
    for family, hf_dir in json.loads((work / "dirs.json").read_text()).items():
        y = work / f"{family}.yaml"
        y.write_text(f"model: {{init_from_hf: {hf_dir}, vocab_multiple: 64}}\nvocab: {{speech_size: 8}}\n"
                     f"data: {{kind: synthetic}}\nparallel: {{tensor: 2}}\n")
        cfg = load_config(PretrainConfig, y)
        model = build_model(cfg, layout).eval()
        init_from_hf(model, cfg, layout)
        ids = torch.randint(0, cfg.vocab.text_size, (2, 48), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            local = model(ids).contiguous()  # [S, B, V / 2]
            parts = [torch.empty_like(local) for _ in range(2)]
            dist.all_gather(parts, local)
            ours = torch.cat(parts, dim=-1).transpose(0, 1)[..., : cfg.vocab.text_size]
            from transformers import AutoModelForCausalLM
            ref = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()(ids).logits
        diff = float((ours - ref).abs().max())
        if layout.rank == 0:
            print(f"{family}: max |diff| {diff:.3g}", flush=True)
        if not diff <= 1e-5:
            bad.append(family)
    ps.destroy_model_parallel()
    dist.destroy_process_group()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
