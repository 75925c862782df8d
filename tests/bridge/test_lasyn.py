"""LaSyn synthesizers: shapes, training finds a planted text -> latent mapping, deterministic synthesis,
and dual-modality bridge batches (real speech rows + rows synthesized from text only)."""
import pytest
import torch

from megaspeech.bridge.lasyn import LatentSynthesizer, LaSynConfig, load_synthesizer, pad_units, save_synthesizer

D, FRAMES = 12, 3  # latent dim; frames per unit in the planted data


def _planted(n, gen, protos):
    """Texts of random units; each unit's latents are FRAMES noisy copies of its prototype."""
    units = [torch.randint(1, 28, (int(torch.randint(4, 9, (), generator=gen)),), generator=gen).tolist() for _ in range(n)]
    lat = [protos[torch.tensor(u)].repeat_interleave(FRAMES, 0) + 0.05 * torch.randn(len(u) * FRAMES, D, generator=gen)
           for u in units]
    u, ul = pad_units(units)
    x = torch.zeros(n, int(ul.max()) * FRAMES, D)
    for i, l in enumerate(lat):
        x[i, :len(l)] = l
    return units, u, ul, x, ul * FRAMES


@pytest.mark.parametrize("kind", ["projection", "diffusion"])
def test_synthesizer_shapes_training_and_determinism(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    protos = torch.randn(29, D, generator=gen) * 2 + 1
    model = LatentSynthesizer(LaSynConfig(kind=kind, latent_dim=D, hidden=48, layers=2, diffusion_steps=50, sample_steps=8,
                                          duration_weight=1.0))
    units, u, ul, x, fl = _planted(64, gen, protos)
    allf = torch.cat([x[i, :fl[i]] for i in range(len(units))])
    model.set_latent_stats(allf.mean(0), allf.std(0))

    def fixed_loss():  # same noise levels and noise each call: comparable before / after
        return float(model.loss(u, ul, x, fl, generator=torch.Generator().manual_seed(5)))

    before = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.loss(u, ul, x, fl, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.5 * before, (before, after)

    model.eval()
    test_units, _, _, test_x, test_fl = _planted(4, gen, protos)
    out = model.synthesize(test_units, seed=3)
    for o, t in zip(out, test_units):  # the duration predictor has learned about FRAMES per unit
        assert o.shape[1] == D and abs(o.shape[0] - FRAMES * len(t)) <= len(t) // 2, (o.shape, len(t))
    out = model.synthesize(test_units, seed=3, durations=[[FRAMES] * len(t) for t in test_units])
    again = model.synthesize(test_units, seed=3, durations=[[FRAMES] * len(t) for t in test_units])
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    if kind == "diffusion":
        other = model.synthesize(test_units, seed=4)
        assert not torch.equal(out[0], other[0])
    # the planted mapping is found: synthesized latents are close to the real ones of unseen texts
    err = torch.stack([((o - test_x[i, :test_fl[i]]) ** 2).mean() for i, o in enumerate(out)]).mean()
    assert err < 0.25 * protos.var(), (float(err), float(protos.var()))


def test_trained_synthesizer_feeds_dual_modality_bridge_batches(asr_corpus, tmp_path):
    from pathlib import Path

    from megaspeech.config.load import load_config
    from megaspeech.config.schema import PretrainConfig
    from megaspeech.bridge.export import SINGLE
    from megaspeech.bridge.lasyn_training import LaSynTrainConfig, train_lasyn
    from megaspeech.bridge.task import BridgeTask
    from megaspeech.train.loss import LMLoss
    root = Path(__file__).resolve().parents[2]
    path = tmp_path / "synth.pt"
    cfg = load_config(LaSynTrainConfig, root / "configs/lasyn_tiny.yaml", [f"data={asr_corpus}", f"out={path}", "steps=40"])
    res = train_lasyn(cfg, log=lambda *_: None)
    assert res["pairs"] == 16 and res["final_loss"] < res["first_loss"]
    from dataclasses import replace

    from megaspeech.bridge.lasyn_training import trained_summary
    assert trained_summary(cfg) == res and trained_summary(replace(cfg, steps=41)) is None  # the benchmark's reuse
    synth = load_synthesizer(path)
    save_synthesizer(synth, tmp_path / "copy.pt")
    copy = load_synthesizer(tmp_path / "copy.pt")
    assert all(torch.equal(a, b) for a, b in zip(synth.synthesize([[5, 6, 7]]), copy.synthesize([[5, 6, 7]])))

    text = tmp_path / "text.txt"  # a text-only corpus (sentences of 6-24 words are used)
    text.write_text("The committee will meet again in the spring to review the budget. "
                    "Our farmers and workers have built a stronger nation than ever before. "
                    "Short one. We must keep the peace with every nation that seeks it honestly.")
    bcfg = load_config(PretrainConfig, root / "configs/bridge_tiny.yaml",
                       [f"bridge.train={asr_corpus}", f"bridge.lasyn={path}", "bridge.lasyn_ratio=0.5",
                        f"bridge.lasyn_text=files:{text}", "train.micro_batch=4"])
    task = BridgeTask(bcfg, SINGLE)
    loader = task.build_loader()
    batch = loader.next_batch()
    syn = batch["latent_lengths"] > 0
    assert syn.tolist() == [False, False, True, True]
    assert (batch["feat_lengths"][syn] == 0).all() and (batch["feat_lengths"][~syn] > 0).all()
    assert batch["latents"].shape[2] == bcfg.bridge.encoder_dim
    assert len(loader.sentences) == 3 and (batch["sample_ids"][syn] < 0).all()  # text-only sentences
    frames, lengths = task.model.frames(batch)
    assert torch.equal(lengths[syn], batch["latent_lengths"][syn])
    assert torch.equal(frames[2, :lengths[2]], batch["latents"][2, :lengths[2]])
    fn = LMLoss(1)
    fn.begin_step(float(batch["loss_mask"].sum()), 1, 1)
    loss = task.micro_loss(task.model, batch, "cpu", fn)
    loss.backward()
    assert torch.isfinite(loss) and task.model.bridge.ctc_head.weight.grad.abs().sum() > 0


def test_benchmark_variant_reused_only_for_the_same_config_and_synthesizer(asr_corpus, tmp_path, monkeypatch):
    from pathlib import Path

    import megaspeech.bridge.evaluate as be
    from megaspeech.config.load import load_config
    from megaspeech.config.schema import PretrainConfig
    trained = []

    def train_config(cfg, layout):
        trained.append(cfg.train.steps)
        return None, {"steps": cfg.train.steps}
    monkeypatch.setattr(be, "train_config", train_config)
    monkeypatch.setattr(be, "transcribe", lambda model, codec, items, prompt, units: {"wer": 50.0, "ctc_wer": 60.0, "length_reduction": 4.0, "hyps": ["a b"], "ctc_hyps": ["a"]})
    monkeypatch.setattr(be, "speech_gain", lambda *a, **k: {"loss_matched": 1.0, "loss_mismatched": 1.5,
                                                             "speech_gain": 0.5, "speech_gain_se": 0.1})
    synth = tmp_path / "synth.pt"
    synth.write_bytes(b"one")
    root = Path(__file__).resolve().parents[2]
    cfg = lambda *o: load_config(PretrainConfig, root / "configs/bridge_tiny.yaml", [f"bridge.train={asr_corpus}", *o])  # noqa: E731
    evals = {"tts": [(None, "a b c")]}
    first = be.run_variant("v", cfg(), tmp_path, None, evals)
    assert first["wer_tts"] == 50.0 and first["ctc_wer_tts"] == 60.0 and trained == [4]
    assert be.run_variant("v", cfg(), tmp_path, None, evals) == first and trained == [4]  # reused
    assert be.run_variant("v", cfg("checkpoint.interval=7", "run.resume=none"), tmp_path, None, evals) == first
    assert first["speech_gain_tts"] == 0.5
    # a stored result that lacks a figure of the current evaluation is measured again (its run resumed)
    import json
    stored = tmp_path / "v" / "result.json"
    old = json.loads(stored.read_text())
    del old["summary"]["speech_gain_se_tts"]
    stored.write_text(json.dumps(old))
    again = be.run_variant("v", cfg(), tmp_path, None, evals)
    assert again["speech_gain_se_tts"] == 0.1 and trained == [4, 4]
    trained.pop()
    be.run_variant("v", cfg("train.steps=5"), tmp_path, None, evals)  # another config
    be.run_variant("v", cfg("train.steps=5"), tmp_path, None, evals, fresh=True)
    be.run_variant("v", cfg("train.steps=5"), tmp_path, None, {"tts": [(None, "other text")]})  # other held-out set
    lasyn = (f"bridge.lasyn={synth}", "bridge.lasyn_ratio=0.5")
    be.run_variant("v", cfg(*lasyn), tmp_path, None, evals)
    be.run_variant("v", cfg(*lasyn), tmp_path, None, evals)
    synth.write_bytes(b"two")  # retrained synthesizer, same path
    be.run_variant("v", cfg(*lasyn), tmp_path, None, evals)
    assert trained == [4, 5, 5, 5, 4, 4]

