"""Checkpoint / resume for every training algorithm: run K steps, save model + optimizer + the
algorithm's own state to a file, rebuild everything from scratch, load, finish the run; the
result is bitwise equal (CPU) to the uninterrupted run. (OBA scores a fixed model and keeps no
training state: its scores are a pure function of model and batches, tested in test_oba.py.)"""
import pytest
import torch
from nets import QKVNet

from winnow.optim import MaskedAdamW

STEPS, K = 9, 4
gen = torch.Generator().manual_seed(11)
X = [torch.randn(6, 16, generator=gen) for _ in range(STEPS)]
Y = [torch.randn(6, 8, generator=gen) for _ in range(STEPS)]
IDS = [torch.randint(0, 60, (3, 7), generator=gen) for _ in range(STEPS)]


def build(algo: str):
    """(model, optimizer, algorithm state object or None, step function(step))."""
    torch.manual_seed(0)
    if algo == "ist":
        from test_ist import tiny_bert_lora

        from winnow.ist import ISTController

        model = tiny_bert_lora(layers=4)
        opt = MaskedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
        ctl = ISTController(model, update_ratio=0.5, score_interval=3, seed=5, optimizer=opt)

        def step(t):
            ctl.begin_step(t, lambda: model(input_ids=IDS[0]).last_hidden_state.pow(2).mean())
            model(input_ids=IDS[t]).last_hidden_state.pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        return model, opt, ctl, step
    model = QKVNet()
    extra = None
    if algo == "masked_adamw":
        opt = MaskedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, block_size=4, state_policy="drop")
        for i, p in enumerate(model.parameters()):
            opt.set_mask(p, torch.arange(opt.num_blocks(p)) % (i + 2) != 0)
    elif algo == "adalora":
        from winnow.adalora import AdaLoRA

        extra = AdaLoRA(model, ["q", "k", "v"], init_r=4, target_r=2, total_step=STEPS, tinit=1, tfinal=0, deltaT=2)
        opt = MaskedAdamW(extra.trainable_parameters(), lr=1e-2)
    elif algo == "id3":
        from winnow.id3 import ID3

        opt = ID3(list(model.named_parameters()), budget=200, total_steps=STEPS, lr=1e-2)
    else:
        raise ValueError(algo)

    def step(t):
        loss = (model(X[t]) - Y[t]).pow(2).mean()
        if algo == "adalora":
            loss = loss + extra.orth_reg_loss()
        loss.backward()
        opt.step()
        if algo == "adalora":
            extra.update_and_allocate(t)
        opt.zero_grad()
    return model, opt, extra, step


@pytest.mark.parametrize("algo", ["masked_adamw", "adalora", "id3", "ist"])
def test_interrupt_and_resume_is_bitwise_identical(algo, tmp_path):
    if algo in ("adalora", "ist"):
        pytest.importorskip("peft")
    model, opt, extra, step = build(algo)
    for t in range(STEPS):
        step(t)
    want = {n: p.detach().clone() for n, p in model.named_parameters()}
    want_states = _states(opt, extra)

    model, opt, extra, step = build(algo)
    for t in range(K):
        step(t)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "algorithm": extra.state_dict() if extra is not None else None}, tmp_path / "ckpt.pt")
    del model, opt, extra, step

    model, opt, extra, step = build(algo)  # a fresh process would do exactly this
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    if extra is not None:
        extra.load_state_dict(ckpt["algorithm"])
    for t in range(K, STEPS):
        step(t)
    got = dict(model.named_parameters())
    assert want.keys() == got.keys()
    for n, w in want.items():
        assert torch.equal(got[n].detach(), w), f"{algo}: {n} differs after resume"
    _equal(_states(opt, extra), want_states)  # optimizer state and the algorithm's own state too
    if algo == "adalora":
        assert extra.rank_pattern() and extra.state_dict()["allocator"]["tracker"] is not None


def _states(opt, extra):
    algo = extra.state_dict() if extra is not None else None
    if isinstance(algo, dict):
        algo.pop("history_len", None)  # IST's log of past probes, not state
    return {"optimizer": opt.state_dict(), "algorithm": algo}


def _equal(a, b, path="state"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_adalora_state_dict_rejects_foreign_state():
    from winnow.adalora import AdaLoRA

    ada = AdaLoRA(QKVNet(), ["q"], init_r=4, target_r=2, total_step=5)
    with pytest.raises(ValueError, match="AdaLoRA.state_dict"):
        ada.load_state_dict({"scores": 1})
    with pytest.raises(ValueError, match="lacks"):
        ada.load_state_dict({"rank_pattern": {"nope.lora_E": [True]}, "allocator": {"tracker": None}})
