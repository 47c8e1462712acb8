"""winnow.adalora.AdaLoRA: same training run as peft, peft-format save/load both ways, merge, errors."""
import copy

import pytest
import torch
from nets import QKVNet

peft = pytest.importorskip("peft")

from winnow.adalora import AdaLoRA  # noqa: E402


Net = QKVNet


CFG = dict(init_r=6, target_r=2, total_step=24, tinit=3, tfinal=5, deltaT=2, lora_alpha=8.0)


def twins(dtype=torch.float32, **over):
    """A peft AdaLoRA model and a winnow one on the same base weights and adapter init."""
    cfg = {**CFG, **over}
    torch.manual_seed(0)
    base = Net().to(dtype)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.AdaLoraConfig(target_modules=["q", "k", "v"], **cfg))
    ours_model = copy.deepcopy(base)
    ours = AdaLoRA(ours_model, ["q", "k", "v"], **cfg)
    with torch.no_grad():
        named = dict(theirs.named_parameters())
        for n, p in ours_model.named_parameters():
            if "lora_" in n:
                p.copy_(named[f"base_model.model.{n}"])
    return theirs, ours_model, ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_run_matches_peft(dtype):
    theirs, model, ours = twins(dtype)
    assert ours.num_trainable() == sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    opt_a = torch.optim.AdamW([p for n, p in theirs.named_parameters() if "lora_" in n], lr=1e-2)
    opt_b = torch.optim.AdamW(ours.trainable_parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for step in range(CFG["total_step"]):
        x = torch.randn(8, 16, generator=gen, dtype=dtype)
        ya, yb = theirs(x), model(x)
        torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
        for y, opt in ((ya, opt_a), (yb, opt_b)):
            opt.zero_grad()
            y.pow(2).mean().backward()
            opt.step()
        theirs.base_model.update_and_allocate(step)
        ours.update_and_allocate(step)
        assert ours.rank_pattern() == (theirs.peft_config["default"].rank_pattern or {})
    assert sum(ours.ranks().values()) == CFG["target_r"] * 3


def test_orth_reg_matches_peft_formula_and_paper_option():
    theirs, model, ours = twins()
    # peft adds it inside forward when the output has .loss; recompute its formula here
    regu, num = 0.0, 0
    for n, p in theirs.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and "default" in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            regu = regu + torch.norm(cov - torch.eye(*cov.size()), p="fro")
            num += 1
    torch.testing.assert_close(ours.orth_reg_loss(), 0.5 * regu / num)
    ours.orth_reg = "paper"
    paper = sum(((m.lora_A["default"] @ m.lora_A["default"].T - torch.eye(6)) ** 2).sum()
                + ((m.lora_B["default"].T @ m.lora_B["default"] - torch.eye(6)) ** 2).sum() for m in ours.modules.values())
    torch.testing.assert_close(ours.orth_reg_loss(), 0.5 * paper)


def _train_to_pattern(ours, model, steps):
    opt = torch.optim.AdamW(ours.trainable_parameters(), lr=5e-2)
    gen = torch.Generator().manual_seed(2)
    for step in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 16, generator=gen)).pow(2).mean().backward()
        opt.step()
        ours.update_and_allocate(step)


def test_saved_adapter_loads_in_peft_with_a_rank_zero_module(tmp_path):
    _, model, ours = twins()
    _train_to_pattern(ours, model, CFG["total_step"])
    with torch.no_grad():  # force one module to rank 0
        ours.config.rank_pattern["v.lora_E.default"] = [False] * 6
        ours.modules["v"].lora_E["default"].zero_()
    ours.save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    base = Net()
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path))
    x = torch.randn(5, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    assert loaded.base_model.model.v.lora_A["default"].shape[0] == 0


def test_peft_adapter_loads_in_winnow(tmp_path):
    theirs, _, _ = twins()
    opt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=5e-2)
    gen = torch.Generator().manual_seed(3)
    for step in range(CFG["total_step"]):
        opt.zero_grad()
        theirs(torch.randn(8, 16, generator=gen)).pow(2).mean().backward()
        opt.step()
        theirs.base_model.update_and_allocate(step)
    theirs.save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    model = Net()
    AdaLoRA.from_pretrained(model, str(tmp_path))
    x = torch.randn(5, 16)
    torch.testing.assert_close(model(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_merge_unmerge_and_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = torch.nn.Sequential(Conv1D(24, 16), torch.nn.Tanh(), torch.nn.Linear(24, 4))
    ada = AdaLoRA(model, ["0", "2"], init_r=4, target_r=2, total_step=10)
    with torch.no_grad():
        for m in ada.modules.values():
            m.lora_E["default"].normal_()
    x = torch.randn(3, 16)
    y = model(x)
    w0 = model[0].base_layer.weight.clone()
    ada.merge()
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-6)
    ada.unmerge()
    torch.testing.assert_close(model[0].base_layer.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), y, rtol=1e-6, atol=1e-6)


def test_bad_config_fails_before_training():
    with pytest.raises(ValueError, match="tinit .* must be < total_step - tfinal"):
        AdaLoRA(Net(), ["q"], tinit=10, tfinal=5, total_step=15)
    with pytest.raises(ValueError, match="target_r > init_r"):
        AdaLoRA(Net(), ["q"], init_r=4, target_r=6, total_step=15)
    with pytest.raises(ValueError, match=r"target modules \['nope'\] match no"):
        AdaLoRA(Net(), ["q", "nope"], total_step=15)
    with pytest.raises(ValueError, match="total_step must be set"):
        AdaLoRA(Net(), ["q"])
    ada = AdaLoRA(Net(), ["q"], init_r=4, target_r=2, total_step=5)
    with pytest.raises(ValueError, match="beyond total_step"):
        ada.update_and_allocate(6)
