"""MaskedAdamW, AdaLoRA and ID3 under torch.distributed (gloo, 2 CPU processes, DDP): every rank
ends with identical parameters and decisions (AdaLoRA's rank pattern, ID3's masks), equal to one
process with the same global batch. Decisions come from the already-reduced gradients, so no
extra collective is needed; float64, so that two processes and one differ only by rounding."""
import pytest
import torch
from distributed import run_ranks
from nets import QKVNet

from winnow.optim import MaskedAdamW

pytestmark = pytest.mark.slow  # spawns processes

STEPS, WORLD = 10, 2
gen = torch.Generator().manual_seed(5)
X = [torch.randn(8, 16, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
Y = [torch.randn(8, 8, generator=gen, dtype=torch.float64) for _ in range(STEPS)]


def _setup(algo: str, model: torch.nn.Module):
    """(optimizer, after-step hook, decisions to compare) for one algorithm."""
    if algo == "masked_adamw":
        opt = MaskedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, block_size=4)
        for i, p in enumerate(model.parameters()):  # a fixed, irregular set of active blocks
            opt.set_mask(p, torch.arange(opt.num_blocks(p)) % (i + 2) != 0)
        return opt, (lambda step: None), lambda: {n: opt.block_mask(p).clone() for n, p in model.named_parameters()}
    if algo == "adalora":
        from winnow.adalora import AdaLoRA

        ada = AdaLoRA(model, ["q", "k", "v"], init_r=4, target_r=2, total_step=STEPS, tinit=2, tfinal=2, deltaT=2)
        opt = MaskedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        return opt, ada.update_and_allocate, lambda: {"ranks": ada.ranks(), "pattern": ada.rank_pattern()}
    if algo == "id3":
        from winnow.id3 import ID3

        opt = ID3(list(model.named_parameters()), budget=300, total_steps=STEPS, lr=1e-2, weight_decay=0.1)
        return opt, (lambda step: None), lambda: {k: v.clone() for k, v in zip(opt.names, opt._unmasked)}
    raise ValueError(algo)


def train(rank: int, world: int, algo: str):
    torch.manual_seed(0)
    model = QKVNet().double()
    opt, after_step, decisions = _setup(algo, model)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    for step, (x, y) in enumerate(zip(X, Y)):
        loss = (net(x[rank::world]) - y[rank::world]).pow(2).mean()
        loss.backward()
        opt.step()
        after_step(step)
        opt.zero_grad()
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()}, "decisions": decisions()}


def _same(a, b, exact: bool):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k], exact)
    elif isinstance(a, torch.Tensor):
        if exact or a.dtype in (torch.bool, torch.int64):
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    else:
        assert a == b


@pytest.mark.parametrize("algo", ["masked_adamw", "adalora", "id3"])
def test_ddp_ranks_agree_and_equal_one_process(algo, tmp_path):
    if algo == "adalora":
        pytest.importorskip("peft")
    r0, r1 = run_ranks(train, tmp_path, algo, world=WORLD)
    _same(r0, r1, exact=True)  # bitwise: every rank took the same decisions and the same steps
    single = train(0, 1, algo)
    _same(single["decisions"], r0["decisions"], exact=True)
    _same(single["params"], r0["params"], exact=False)
    torch.manual_seed(0)
    init = {n: p.detach() for n, p in QKVNet().double().named_parameters()}
    trained = [n for n, p in r0["params"].items() if n not in init or not torch.equal(p, init[n])]
    assert trained, "training changed nothing"
