"""Under FSDP2 (fully_shard, gloo, 2 CPU processes): after K steps the full parameters equal one
unsharded process with the same global batch (float64, 1e-9), every decision is the same on
every rank and in the single process, the optimizer steps issue no collective of their own
beyond the ones stated, and a torch.distributed.checkpoint save / load on a fresh process group
continues exactly like an uninterrupted run."""
import pytest
import torch
from distributed import run_ranks

from winnow.optim import MaskedAdamW

pytestmark = pytest.mark.slow  # spawns processes

WORLD, STEPS, SPLIT = 2, 6, 3  # SPLIT: steps before the checkpoint in the resumed run
gen = torch.Generator().manual_seed(5)
X = [torch.randn(8, 16, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
Y = [torch.randn(8, 5, generator=gen, dtype=torch.float64) for _ in range(STEPS)]


class OddNet(torch.nn.Module):
    """Dims that shard unevenly over 2 ranks (13 rows: 7 + 6; 5 rows: 3 + 2) and, with blocks of
    6 elements, put block boundaries inside the shards' first blocks."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(16, 13)
        self.k = torch.nn.Linear(16, 13)
        self.v = torch.nn.Linear(13, 5)

    def forward(self, x):
        return self.v(torch.tanh(self.q(x) * self.k(x)))


def _mesh_and_shard(model, world):
    if world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for m in (model.q, model.k, model.v):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _build(world):
    torch.manual_seed(0)
    model = _mesh_and_shard(OddNet().double(), world)
    opt = MaskedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, block_size=6)
    for i, p in enumerate(model.parameters()):  # a fixed, irregular set of active blocks
        opt.set_mask(p, torch.arange(opt.num_blocks(p)) % (i + 2) != 0)
    return model, opt


def _train(model, opt, rank, world, steps):
    from torch.distributed.tensor.debug import CommDebugMode

    collectives = 0
    for step in steps:
        loss = (model(X[step][rank::world]) - Y[step][rank::world]).pow(2).mean()
        loss.backward()
        with CommDebugMode() as comm:
            opt.step()
        collectives += comm.get_total_counts()
        opt.zero_grad()
    return collectives


def masked_adamw_run(rank, world, checkpoint_dir=None, resume=False):
    """Trains STEPS steps; with checkpoint_dir, stops after SPLIT and saves (resume=False) or loads
    and trains the rest (resume=True)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, opt = _build(world)
    steps = range(STEPS)
    if checkpoint_dir is not None and not resume:
        steps = range(SPLIT)
    if resume:
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=checkpoint_dir)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        steps = range(SPLIT, STEPS)
    collectives = _train(model, opt, rank, world, steps)
    if checkpoint_dir is not None and not resume:
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=checkpoint_dir)
    return {"params": {n: _full(p).detach().clone() for n, p in model.named_parameters()},
            "masks": {n: opt.block_mask(p).clone() for n, p in model.named_parameters()},
            "state_bytes": opt.state_bytes(), "collectives": collectives}


def test_masked_adamw_on_shards_equals_one_process_and_resumes_through_dcp(tmp_path):
    for d in ("plain", "first", "second"):
        (tmp_path / d).mkdir()
    ranks = run_ranks(masked_adamw_run, tmp_path / "plain", world=WORLD)
    single = masked_adamw_run(0, 1)
    for r in ranks:
        assert r["collectives"] == 0  # the step reads and writes local shards only
        for n, p in single["params"].items():
            torch.testing.assert_close(r["params"][n], p, rtol=1e-9, atol=1e-12)
    for n, mask in single["masks"].items():  # each rank holds the blocks its shard touches
        union = ranks[0]["masks"][n] | ranks[1]["masks"][n]
        assert torch.equal(union, mask)
    assert not torch.equal(ranks[0]["masks"]["q.weight"], single["masks"]["q.weight"])  # not the other's
    assert sum(r["state_bytes"] for r in ranks) < 1.3 * single["state_bytes"]  # each rank its share
    torch.manual_seed(0)
    init = {n: p.detach() for n, p in OddNet().double().named_parameters()}
    for n in init:  # every parameter with an active block trained, the others did not move
        assert torch.equal(single["params"][n], init[n]) != bool(single["masks"][n].any()), n

    run_ranks(masked_adamw_run, tmp_path / "first", str(tmp_path / "ckpt"), world=WORLD)
    resumed = run_ranks(masked_adamw_run, tmp_path / "second", str(tmp_path / "ckpt"), True, world=WORLD)
    for r, uninterrupted in zip(resumed, ranks):
        for n, p in uninterrupted["params"].items():
            torch.testing.assert_close(r["params"][n], p, rtol=0, atol=0)
        for n, m in uninterrupted["masks"].items():
            assert torch.equal(r["masks"][n], m)
