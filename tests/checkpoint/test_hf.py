"""Acceptance 4 of issue 5: Hugging Face export (checkpoint of a TP=2 run -> transformers) and import
(SmolLM2-135M -> ours with the speech vocabulary -> transformers again)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers.checkpoint_runs import REPO, SP_MODEL, launch, losses
from tests.helpers.smollm2 import smollm2_dir
from megaspeech.config.load import load_config
from megaspeech.config.schema import ModelConfig, PretrainConfig
from megaspeech.data.toy_stream import SyntheticLoader
from megaspeech.checkpoint.hf_import import init_from_hf
from megaspeech.checkpoint.tp_rules import tp_slice
from megaspeech.model.hf import adapter_for
from megaspeech.checkpoint.hf_export import speech_token, write_hf
from megaspeech.model.llm import DecoderLM
from megaspeech.parallel.layers import TorchLayers
from megaspeech.parallel.state import Layout
from megaspeech.checkpoint.offline import full_state_dict
from megaspeech.vocab import Vocab


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def exported(ref_run, tmp_path_factory):
    """The TP=2 reference run's step-5 checkpoint exported with the CLI tool."""
    out = tmp_path_factory.mktemp("hf") / "tp2"
    ckpt = ref_run / "checkpoints" / "step00000005"
    r = subprocess.run([sys.executable, str(REPO / "launch" / "export_hf.py"), "--config",
                        str(REPO / "configs" / "hf" / "export.yaml"), f"checkpoint={ckpt}", f"out={out}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return ckpt, out


def test_export_tp2_logits_match_ours(exported, ref_run):
    ckpt, out = exported
    sd, meta = full_state_dict(ckpt)
    m = ModelConfig(**meta["config"]["model"])
    ours = DecoderLM(m, TorchLayers(), sd["0.embed.weight"].shape[0], seed=0)
    ours.load_state_dict(sd, strict=True)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 5128, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(hf(ids).logits, ours(ids).transpose(0, 1)) < 1e-4
    # ...and the exported model computes the loss the TP=2 run logged for step 6 (its batch, the
    # weights after step 5): ties the merged TP slices to the sharded model that trained them.
    cfg = meta["config"]
    loader = SyntheticLoader(Vocab.from_dict(cfg["vocab"]), cfg["train"]["seq_len"], cfg["train"]["micro_batch"],
                             0, 1, cfg["run"]["seed"], cfg["data"]["speech_fraction"])
    it = iter(loader)
    batches = [next(it) for _ in range(12)][10:]  # 2 micro-batches per step: step 6 = batches 10, 11
    with torch.no_grad():
        nll = [F.cross_entropy(hf(b["input_ids"]).logits.flatten(0, 1), b["labels"].flatten(), reduction="sum")
               for b in batches]
    loss = float(sum(nll) / sum(b["loss_mask"].sum() for b in batches))
    assert loss == pytest.approx(dict(losses(ref_run))[6], rel=1e-5)


def test_export_tokenizer_is_the_unified_vocab(exported):
    _, out = exported
    tok = AutoTokenizer.from_pretrained(out)
    vocab = Vocab.load(out / "vocab.json")
    sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    for text in ["Hello world, this is a test.", "  Two  spaces\nand ünïcödé ☃ 123", "The Union is strong."]:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
    assert len(tok) == vocab.size
    assert tok.convert_tokens_to_ids(speech_token(7)) == vocab.speech_id(7)
    assert [tok.convert_tokens_to_ids(s) for s in vocab.specials] == [vocab.special(s) for s in vocab.specials]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] in (vocab.eos_id, [vocab.eos_id]) and gen["bos_token_id"] == vocab.bos_id


def test_merged_tp_slices_reslice_to_the_saved_shards(exported):
    ckpt, _ = exported
    sd, _ = full_state_dict(ckpt)
    for r in range(2):
        shard = torch.load(ckpt / f"mp_rank_{r:02d}_model_states.pt", weights_only=True)["module"]
        assert set(shard) == set(sd)  # megatron's `_extra_state: None` entries were dropped at save
        for name, t in shard.items():
            assert torch.equal(tp_slice(name, sd[name], 2, r), t), name


@pytest.mark.parametrize("family", ["llama", "glm"])
def test_adapter_round_trip_and_logits(family, tmp_path):
    m = ModelConfig(family=family, num_layers=2, hidden_size=64, ffn_hidden_size=96, num_heads=4, num_kv_heads=2,
                    rope_fraction=0.5 if family == "glm" else 1.0, qkv_bias=family == "glm", rope_theta=5000.0)
    vocab = Vocab(text_size=100, speech_size=20)
    ours = DecoderLM(m, TorchLayers(), vocab.padded_size(m.vocab_multiple), seed=3)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.1)  # non-trivial norms and biases
    sd = ours.state_dict()
    ad = adapter_for(m)
    back = ad.from_hf(ad.to_hf(sd))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    out = write_hf(sd, m, vocab, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == ("GlmForCausalLM" if family == "glm" else "LlamaForCausalLM")
    ids = torch.randint(0, vocab.size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel(hf(ids).logits, ours(ids).transpose(0, 1)) < 1e-5


def test_smollm2_import_export_round_trip(tmp_path):
    src = smollm2_dir()
    cfg = load_config(PretrainConfig, str(REPO / "configs" / "hf" / "smollm2_135m.yaml"),
                      [f"model.init_from_hf={src}"])
    ours = DecoderLM(cfg.model, TorchLayers(), cfg.padded_vocab_size(), seed=0)
    init_from_hf(ours, cfg, Layout(tp=1, pp=1, dp=1, tp_rank=0, pp_rank=0, dp_rank=0, rank=0, world=1))
    emb = ours.embedding.embed.weight
    assert torch.equal(emb[cfg.vocab.speech_offset], emb[: cfg.vocab.text_size].mean(0))  # new rows = mean
    out = write_hf(ours.state_dict(), cfg.model, cfg.vocab, tmp_path / "smollm2_speech")
    orig = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    new = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok, new_tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    assert len(new_tok) == cfg.vocab.size
    assert new_tok.convert_tokens_to_ids("<|begin_of_speech|>") == cfg.vocab.bos_speech_id
    V = cfg.vocab.text_size
    for prompt in ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert new_tok(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
        with torch.no_grad():
            a, b = orig(ids).logits, new(ids).logits
            assert b.shape[-1] == cfg.padded_vocab_size()
            assert rel(b[..., :V], a) <= 1e-5  # (exactly 0 with 1 thread: same kernels, same weights)
            ga = orig.generate(ids, max_new_tokens=20, do_sample=False)
            gb = new.generate(ids, max_new_tokens=20, do_sample=False)
        assert ga.shape[1] == ids.shape[1] + 20, "the original stopped early: pick prompts that run 20 tokens"
        assert torch.equal(ga, gb), (tok.decode(ga[0]), tok.decode(gb[0]))


def test_init_from_hf_names_the_mismatched_field():
    """The YAML's value and config.json's, both named, when the config is loaded (before any process
    group); and again when the weights are loaded into a config built another way."""
    path, src = str(REPO / "configs" / "hf" / "smollm2_135m.yaml"), smollm2_dir()
    with pytest.raises(ValueError, match=re.escape("model.rope_theta=10000.0 in the config") + ".*100000.0"):
        load_config(PretrainConfig, path, [f"model.init_from_hf={src}", "model.rope_theta=10000.0"])
    cfg = load_config(PretrainConfig, path, [f"model.init_from_hf={src}"])
    cfg.model.rope_theta = 10000.0
    with pytest.raises(ValueError, match=re.escape("model.rope_theta")):
        init_from_hf(torch.nn.Module(), cfg, Layout(1, 1, 1, 0, 0, 0, 0, 1))


def test_init_from_hf_in_a_pp2_run(exported, tmp_path):
    """model.init_from_hf inside the trainer at PP=2 (each stage loads its layers; the TP slicing is
    checked against real TP=2 shards above): the first step's loss is the HF model's on that batch."""
    _, out = exported
    run = tmp_path / "run"
    rc = launch(run, ["parallel.tensor=1", "parallel.pipeline=2", f"model.init_from_hf={out}", "train.steps=1",
                      "checkpoint.interval=0", "checkpoint.save_at_end=false"])
    assert rc == 0, f"see {run}/launch.log"
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    c = yaml.safe_load((run / "config.yaml").read_text())
    it = iter(SyntheticLoader(Vocab.from_dict(c["vocab"]), c["train"]["seq_len"], c["train"]["micro_batch"], 0, 1,
                              c["run"]["seed"], c["data"]["speech_fraction"]))
    batches = [next(it), next(it)]  # step 1 at DP=1: micro-batches 0 and 1
    with torch.no_grad():
        nll = [F.cross_entropy(hf(b["input_ids"]).logits.flatten(0, 1), b["labels"].flatten(), reduction="sum")
               for b in batches]
    loss = float(sum(nll) / sum(b["loss_mask"].sum() for b in batches))
    assert losses(run)[0] == (1, pytest.approx(loss, rel=1e-5))
