"""The bridge model of task: bridge in one process: the joint LM + CTC loss equals a per-row reference,
LoRA trains only its adapters and its merged export computes the adapted model, the loader resumes."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megaspeech.config.load import load_config
from megaspeech.config.schema import PretrainConfig
from megaspeech.bridge.export import SINGLE
from megaspeech.bridge.model import merged_lm
from megaspeech.bridge.task import BridgeTask
from megaspeech.train.loss import LMLoss

ROOT = Path(__file__).resolve().parents[2]


def _cfg(corpus, *overrides):
    return load_config(PretrainConfig, ROOT / "configs/bridge_tiny.yaml", [f"bridge.train={corpus}", *overrides])


def _lm_loss(batch):
    fn = LMLoss(1)
    fn.begin_step(float(batch["loss_mask"].sum()), 1, 1)
    return fn


def _reference_loss(model, batch, ctc_weight):
    """Each row alone (no padding anywhere): encoder, bridge, [speech; text] through the LM, summed
    cross-entropy over the target tokens / all targets + ctc_weight x mean over rows of CTC / units."""
    lm, ce_sum, n_tok, ctc = model.decoder(), 0.0, 0.0, []
    for i in range(batch["feats"].shape[0]):
        fl, m, c = int(batch["feat_lengths"][i]), int(batch["text_lengths"][i]), int(batch["ctc_lengths"][i])
        h, h_len = model.encoder(batch["feats"][i:i + 1, :, :fl], batch["feat_lengths"][i:i + 1])
        out = model.bridge(h, h_len)
        n = int(out.lengths[0])
        ids = batch["text_ids"][i, :m]
        x = torch.cat([out.embeds[0, :n], lm.embedding(ids[None]).transpose(0, 1)[0]])
        logits = lm(None, embeds=x[:, None])[:, 0].float()  # [n + m, V]
        tok = F.cross_entropy(logits[n:n + m - 1], ids[1:], reduction="none") * batch["loss_mask"][i, 1:m]
        ce_sum, n_tok = ce_sum + tok.sum(), n_tok + float(batch["loss_mask"][i, 1:m].sum())
        logp = out.ctc_logits.float().log_softmax(-1).transpose(0, 1)
        ctc.append(F.ctc_loss(logp, batch["ctc_targets"][i:i + 1, :c], h_len, torch.tensor([c]), blank=0,
                              reduction="sum") / c)
    return ce_sum / n_tok + ctc_weight * torch.stack(ctc).mean()


@pytest.mark.parametrize("units", ["chars", "lm"])
def test_joint_ctc_lm_loss_equals_per_row_reference(asr_corpus, units):
    """Batched + padded + spliced + label layout on the spliced sequence == each row computed alone,
    in value and in the gradients of the bridge, the CTC head and the LM (QA and ASR rows mixed), with
    the CTC head on characters or on the LM's own tokens."""
    cfg = _cfg(asr_corpus, "bridge.qa_fraction=0.5", "bridge.ctc_weight=0.7", "train.micro_batch=4",
               f"bridge.ctc_units={units}")
    task = BridgeTask(cfg, SINGLE)
    loader = task.build_loader()
    batch = loader.next_batch()
    assert loader.counts["qa"] > 0 and loader.counts["asr"] > 0
    assert len(set(batch["feat_lengths"].tolist())) > 1  # really padded
    model = task.model
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("bridge.ctc_head") for n in params) and any(n.startswith("lm.") for n in params)
    loss = task.micro_loss(model, batch, "cpu", _lm_loss(batch))
    grads = torch.autograd.grad(loss, list(params.values()))
    ref = _reference_loss(model, batch, 0.7)
    ref_grads = torch.autograd.grad(ref, list(params.values()))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for (name, _), g, r in zip(params.items(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")  # fp32 sums over 4k classes
    # the CTC term is really in the loss: weight 0 changes it by exactly 0.7 x the CTC mean
    ctc_mean = task.sums[0] / task.sums[1]
    task0 = BridgeTask(_cfg(asr_corpus, "bridge.qa_fraction=0.5", "bridge.ctc_weight=0.0", "train.micro_batch=4",
                            f"bridge.ctc_units={units}"), SINGLE)
    task0.model.load_state_dict(model.state_dict())
    loss0 = task0.micro_loss(task0.model, batch, "cpu", _lm_loss(batch))
    torch.testing.assert_close(float(loss - loss0), 0.7 * float(ctc_mean), rtol=1e-5, atol=1e-6)


def test_bf16_model_reads_fp32_batches_and_matches_fp32(asr_corpus):
    """train.precision=bf16 casts the module, not the loader's fp32 features: the model casts them,
    and its joint loss stays within bf16 rounding of the fp32 model's."""
    import copy
    task = BridgeTask(_cfg(asr_corpus, "train.micro_batch=4"), SINGLE)
    batch = task.build_loader().next_batch()
    assert batch["feats"].dtype == torch.float32
    ref = float(task.micro_loss(task.model, batch, "cpu", _lm_loss(batch)))
    half = copy.deepcopy(task.model).to(torch.bfloat16)
    loss = task.micro_loss(half, batch, "cpu", _lm_loss(batch))
    assert loss.dtype == torch.float32 and abs(float(loss) - ref) < 0.02 * ref


def test_ctc_embed_adds_the_lms_unit_embeddings_by_run_posterior(asr_corpus):
    """bridge.ctc_embed: each compressed vector = projected features + (the run's mean CTC posterior) x
    (the LM's input embeddings of the units' tokens, blank row zero), computed here by hand for one row;
    the speech path's gradient reaches exactly the LM's embedding rows of those tokens."""
    from megaspeech.bridge.model import CTC_CHARS
    from megaspeech.bridge.batches import text_codec
    task = BridgeTask(_cfg(asr_corpus, "bridge.ctc_embed=true", "bridge.reduce=mean", "train.micro_batch=2"), SINGLE)
    model, batch = task.model, task.build_loader().next_batch()
    codec = text_codec(task.cfg.bridge, task.cfg.vocab)
    ids = model.unit_ids.tolist()
    assert ids[0] == -1 and ids[1 + CTC_CHARS.index("e")] == codec.encode("e")[-1]
    E = model.unit_embeds()
    assert torch.equal(E[0], torch.zeros_like(E[0]))
    assert torch.equal(E[2], model.decoder().embedding(torch.tensor([[ids[2]]]))[0, 0])
    with torch.no_grad():  # a CTC head that emits (seeded here: not whatever the tests before left in the RNG)
        model.bridge.ctc_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    out, h, h_len = model.speech(batch)
    assert int(out.lengths[0]) > 1
    logits = model.bridge.ctc_head(h[0, :int(h_len[0])])
    lab, soft = logits.argmax(-1).tolist(), logits.softmax(-1)
    runs, t = [], 0
    while t < len(lab):
        e = t
        while e < len(lab) and lab[e] == lab[t]:
            e += 1
        if lab[t] != 0:
            runs.append((t, e))
        t = e
    want = torch.stack([model.bridge.proj(h[0, a:b].mean(0)) + soft[a:b].mean(0) @ E for a, b in runs])
    torch.testing.assert_close(out.embeds[0, :len(runs)], want, rtol=1e-4, atol=1e-5)
    emb = model.decoder().embedding.embed.weight
    (g,) = torch.autograd.grad(model.speech(batch)[0].embeds.sum(), [emb])  # the speech path alone
    rows = {i for i in ids if i >= 0}
    assert all(bool(g[i].abs().sum() > 0) == (i in rows) for i in range(emb.shape[0]))
    loss = task.micro_loss(model, batch, "cpu", _lm_loss(batch))
    assert torch.isfinite(loss)


def test_ctc_units_on_lm_tokens_read_back_the_transcript(asr_corpus):
    """bridge.ctc_units=lm: labels are the LM's tokens + 1 (blank 0); greedy frame labels with repeats
    and blanks decode to the transcript; ctc_embed's table is the identity; the head has text_size + 1
    outputs and the loader's CTC targets are the transcript's tokens."""
    from megaspeech.bridge.batches import ctc_units_for
    cfg = _cfg(asr_corpus, "bridge.ctc_units=lm", "bridge.ctc_embed=true")
    units = ctc_units_for(cfg.bridge, cfg.vocab)
    text = "we must keep the peace"
    lab = units.encode(text)
    assert lab == [i + 1 for i in units.codec.encode(" " + text)] and 0 not in lab
    frames = [0, 0] + [x for t in lab for x in (t, t, 0)]
    assert units.decode(frames) == text
    assert units.token_ids[:3] == [-1, 0, 1] and len(units.token_ids) == units.size == cfg.vocab.text_size + 1
    task = BridgeTask(cfg, SINGLE)
    assert task.model.bridge.ctc_head.out_features == cfg.vocab.text_size + 1
    batch = task.build_loader().next_batch()
    i = int(batch["sample_ids"][0, 0])
    want = units.encode(task.build_loader().texts[i])
    assert batch["ctc_targets"][0, :int(batch["ctc_lengths"][0])].tolist() == want


def test_lr_mult_names_the_encoder_side(asr_corpus):
    task = BridgeTask(_cfg(asr_corpus, "bridge.lr_mult=10"), SINGLE)
    from megaspeech.train.schedule import build_optimizer
    opt, _ = build_optimizer(task.model, task.cfg.optim, 4, lr_mult=task.lr_mult())
    side = {id(p) for n, p in task.model.named_parameters() if n.startswith(("bridge.", "encoder."))}
    for g in opt.param_groups:
        mine = {id(p) in side for p in g["params"]}
        assert len(mine) == 1 and g["lr"] == task.cfg.optim.lr * (10 if mine.pop() else 1)
    assert BridgeTask(_cfg(asr_corpus), SINGLE).lr_mult() == {}


def test_benchmarks_convert_smollm2_only_for_its_default_dir(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import megaspeech.model.smollm2 as sm
    from megaspeech.bridge.evaluate import ensure_smollm2
    monkeypatch.setenv("MEGASPEECH_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(sm, "smollm2_dir", lambda: calls.append(1))
    cfg = lambda lm, tok: SimpleNamespace(model=SimpleNamespace(init_from_hf=lm), bridge=SimpleNamespace(text_tokenizer=tok))  # noqa: E731
    ensure_smollm2(cfg("", ""))
    ensure_smollm2(cfg(str(tmp_path / "other"), ""))
    assert calls == []
    ensure_smollm2(cfg("", str(tmp_path / "smollm2")))
    assert calls == [1]


def test_lora_trains_only_adapters_and_merged_export_equals_adapted(asr_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from megaspeech.checkpoint.hf_export import write_hf
    cfg = _cfg(asr_corpus, "bridge.lm_mode=lora", "bridge.lora_rank=4", "bridge.lora_targets=[qkv,proj,down]")
    task = BridgeTask(cfg, SINGLE)
    model = task.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lm_trainable = {n for n in trainable if n.startswith("lm.")}
    assert lm_trainable and all(".lora_A." in n or ".lora_B." in n for n in lm_trainable)
    assert len(lm_trainable) == 2 * 3 * cfg.model.num_layers
    assert all(n.startswith(("lm.", "bridge.")) for n in trainable)  # encoder frozen by default
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(1234)  # the global RNG does not decide the init: run.seed does (LoRA A included)
    again = dict(BridgeTask(cfg, SINGLE).model.named_parameters())
    assert all(torch.equal(before[n], again[n]) for n in before)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loader = task.build_loader()
    for _ in range(3):
        batch = loader.next_batch()
        task.micro_loss(model, batch, "cpu", _lm_loss(batch)).backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (n in trainable), f"{n}: changed={changed}, trainable={n in trainable}"

    merged = merged_lm(model)
    assert not any("lora" in n for n in merged.state_dict())
    with torch.no_grad():
        out, _, _ = model.speech(batch)
        from megaspeech.bridge.layer import splice
        embeds, _ = splice(out, model.embed_text(batch["text_ids"]), batch["text_lengths"])
        adapted = model.lm(None, embeds=embeds)
        with model.lm.disable_adapter():
            unadapted = model.lm(None, embeds=embeds)
        assert (adapted - unadapted).abs().max() > 1e-3  # the adapters do change the model
        torch.testing.assert_close(merged(None, embeds=embeds), adapted, rtol=1e-4, atol=1e-5)
        hf_dir = write_hf(merged.state_dict(), cfg.model, cfg.vocab, tmp_path / "hf")
        hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        hf_logits = hf(inputs_embeds=embeds.transpose(0, 1)).logits.transpose(0, 1)
    # compare where the rows are real (the HF model attends over the zero padding only after them)
    real = torch.arange(embeds.shape[0])[:, None] < (out.lengths + batch["text_lengths"])[None, :]
    torch.testing.assert_close(hf_logits[real], adapted[real], rtol=1e-4, atol=1e-4)


def test_loader_resumes_exactly_and_deals_ranks(asr_corpus):
    cfg = _cfg(asr_corpus, "bridge.qa_fraction=0.5", "train.micro_batch=3", "train.global_batch=6")
    task = BridgeTask(cfg, SINGLE)
    a = task.build_loader()
    ref = [a.next_batch() for _ in range(7)]  # 21 rows: past the 16-utterance epoch
    b = task.build_loader()
    for _ in range(3):
        b.next_batch()
    c = task.build_loader()
    c.load_state_dict(b.state_dict())
    for want in ref[3:]:
        got = c.next_batch()
        for k in want:
            assert torch.equal(got[k], want[k]), k
    ids = torch.cat([r["sample_ids"] for r in ref[:6]]).flatten().tolist()
    assert sorted(ids[:16]) == list(range(16)) and ids[16:] != ids[:2]  # an epoch is a permutation, reshuffled


def test_kv_cached_greedy_generation_equals_full_recompute(asr_corpus):
    """The evaluation decoder (KV cache over the LoRA-merged LM, rows left-padded) picks the same
    tokens as re-running the adapted model on the whole spliced sequence at every step."""
    from megaspeech.bridge.layer import splice
    from megaspeech.bridge.model import greedy_generate
    task = BridgeTask(_cfg(asr_corpus, "bridge.lm_mode=lora", "train.micro_batch=3", "train.global_batch=3"), SINGLE)
    model = task.model.eval()
    gen = torch.Generator().manual_seed(0)  # seeded (as LoRA A is, from run.seed): the rows must differ (asserted last)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=gen)
    batch = task.build_loader().next_batch()
    batch["text_lengths"] = torch.tensor([3, 2, 3])  # prompts of different lengths
    got = greedy_generate(model, batch, eos_id=-1, max_new_tokens=6)
    with torch.no_grad():
        sp, _, _ = model.speech(batch)
        seqs = [batch["text_ids"][i, :int(n)].tolist() for i, n in enumerate(batch["text_lengths"])]
        start = [len(s) for s in seqs]
        for _ in range(6):
            cur = torch.zeros(3, max(map(len, seqs)), dtype=torch.long)
            for i, s in enumerate(seqs):
                cur[i, :len(s)] = torch.tensor(s)
            embeds, total = splice(sp, model.embed_text(cur), torch.tensor([len(s) for s in seqs]))
            logits = model.lm(None, embeds=embeds)
            for i in range(3):
                seqs[i].append(int(logits[int(total[i]) - 1, i].argmax()))
    assert got == [s[k:] for s, k in zip(seqs, start)]
    assert len({tuple(g) for g in got}) > 1


def test_bad_bridge_configs_fail_naming_the_field(asr_corpus, tmp_path):
    import pytest

    from megaspeech.config.load import ConfigError
    from megaspeech.bridge.batches import BridgeLoader
    from megaspeech.bridge.lasyn import load_synthesizer
    cases = {("bridge.lasyn_ratio=0.5",): "bridge.lasyn", ("parallel.pipeline=2",): "parallel.pipeline",
             ("parallel.tensor=2", "parallel.sequence_parallel=true"): "parallel.sequence_parallel",
             ("bridge.lm_mode=adapters",): "bridge.lm_mode", ("bridge.train=",): "bridge.train",
             ("bridge.kind=conv", "bridge.ctc_embed=true"): "bridge.ctc_embed", ("bridge.lr_mult=0",): "bridge.lr_mult"}
    for overrides, field in cases.items():
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            _cfg(asr_corpus, *overrides)
    with pytest.raises(FileNotFoundError, match="launch/train_lasyn.py"):
        load_synthesizer(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    cfg = _cfg(asr_corpus, f"bridge.train={tmp_path / 'empty'}")
    with pytest.raises(Exception, match="manifest.json"):
        BridgeLoader(cfg.bridge, None, micro_batch=2, dp_rank=0, dp_size=1, seed=0)
    loader = BridgeTask(_cfg(asr_corpus), SINGLE).build_loader()
    with pytest.raises(ValueError, match="data-parallel size"):
        loader.load_state_dict({"pos": 0, "syn_pos": 0, "dp_size": 2, "counts": {}})


def test_speech_gain_scores_own_vs_next_utterances_speech(asr_corpus):
    """bridge_eval.speech_gain: batching (padding) does not change the losses; `mismatched` is exactly
    the matched loss of the same transcripts with the audio rolled by one; with one audio for every
    transcript the gain is exactly 0."""
    from megaspeech.bridge.batches import ctc_units_for
    from megaspeech.bridge.evaluate import dataset_items, speech_gain
    cfg = _cfg(asr_corpus)
    model = BridgeTask(cfg, SINGLE).model
    codec = ctc_units_for(cfg.bridge, cfg.vocab).codec
    items = dataset_items(str(asr_corpus), limit=5)
    text = (cfg.bridge.asr_prompt, cfg.bridge.max_text_tokens)
    one = speech_gain(model, codec, items, *text, batch=1)
    two = speech_gain(model, codec, items, *text, batch=2)
    for k in one:
        assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-6), k
    rolled = [(items[(i + 1) % 5][0], items[i][1]) for i in range(5)]
    assert speech_gain(model, codec, rolled, *text)["loss_matched"] == pytest.approx(one["loss_mismatched"], rel=1e-6)
    assert abs(one["speech_gain"]) > 1e-4  # the untrained model's losses do depend on the audio
    same = speech_gain(model, codec, [(items[0][0], t) for _, t in items], *text)
    assert same["speech_gain"] == 0.0 and same["speech_gain_se"] == 0.0
    # the standard error of the ratio estimate over the 5 utterances, from each utterance scored alone
    from megaspeech.bridge.batches import text_row
    n_tok = np.array([sum(text_row(codec, text[0], t, text[1])[1]) for _, t in items])
    own = np.array([speech_gain(model, codec, [it], *text)["loss_matched"] for it in items]) * n_tok
    other = np.array([speech_gain(model, codec, [it], *text)["loss_matched"] for it in rolled]) * n_tok
    gain = (other - own).sum() / n_tok.sum()
    assert gain == pytest.approx(one["speech_gain"], rel=1e-4)
    se = np.sqrt(((other - own - gain * n_tok) ** 2).sum() * 5 / 4) / n_tok.sum()
    assert one["speech_gain_se"] == pytest.approx(se, rel=1e-3) and se > 0
