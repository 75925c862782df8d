"""Trainer-step options of issue 17: train.compile auto|true|false, train.prefetch, and fused AdamW
(the CUDA choice) computing the same update as the default AdamW."""
import pytest
import torch

from megaspeech.config.load import ConfigError, load_config
from megaspeech.config.schema import OptimConfig, PretrainConfig
from megaspeech.train.schedule import build_optimizer
from tests.helpers.launch import ROOT

TINY = ROOT / "configs" / "tiny.yaml"


@pytest.mark.parametrize("value,cuda,cpu", [(None, True, False), ("auto", True, False), ("true", True, True),
                                            ("false", False, False)])
def test_compile_auto_is_on_for_cuda_only(value, cuda, cpu):
    cfg = load_config(PretrainConfig, TINY, [] if value is None else [f"train.compile={value}"])
    assert (cfg.train.compile_enabled("cuda"), cfg.train.compile_enabled("cpu")) == (cuda, cpu)


@pytest.mark.parametrize("override,field", [("train.compile=sometimes", "train.compile"),
                                            ("train.prefetch=-1", "train.prefetch")])
def test_bad_step_options_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(PretrainConfig, TINY, [override])


def test_fused_adamw_matches_default():
    def run(fused):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
        init = [p.detach().clone() for p in model.parameters()]
        opt, sched = build_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=2), total_steps=10, fused=fused)
        for _ in range(5):
            loss = model(torch.randn(8, 16)).square().mean()
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        return opt, [p.detach().clone() for p in model.parameters()], init

    opt_f, fused, init = run(True)
    opt_d, default, _ = run(False)
    assert opt_f.defaults["fused"] and not opt_d.defaults["fused"]
    assert [g["weight_decay"] for g in opt_f.param_groups] == [0.1, 0.0]
    for a, b in zip(fused, default):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (fused[0] - init[0]).abs().max() > 1e-2  # the steps did move the weights


def test_lr_mult_scales_the_named_modules_throughout_the_schedule():
    model = torch.nn.ModuleDict({"bridge": torch.nn.Linear(4, 4), "lm": torch.nn.Linear(4, 4)})
    opt, sched = build_optimizer(model, OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2), total_steps=10,
                                 lr_mult={"bridge.": 10.0})
    owner = {id(p): n.split(".")[0] for n, p in model.named_parameters()}
    seen = []
    for _ in range(6):
        by = {owner[id(g["params"][0])]: g["lr"] for g in opt.param_groups}
        assert opt.param_groups[0]["params"][0] is model["lm"].weight  # the logged lr is optim.lr's
        assert by["bridge"] == pytest.approx(10 * by["lm"])
        # each group knows its multiple: with the LM frozen (no group at 1x) the trainer logs lr / lr_mult
        assert all(g["lr"] / g["lr_mult"] == pytest.approx(by["lm"]) for g in opt.param_groups)
        seen.append(by["lm"])
        opt.step()
        sched.step()
    assert seen[0] < seen[1] and seen[-1] < seen[2]  # warmup, then decay, moved both groups
    assert {g["weight_decay"] for g in opt.param_groups if g["params"][0].ndim == 1} == {0.0}
