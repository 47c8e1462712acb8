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


def _gathered(mask_local, p):
    """The full-parameter view of a per-element local tensor (test side: a collective is fine here)."""
    if not hasattr(p, "full_tensor"):
        return mask_local.clone()
    from winnow.optim import shards

    return shards.as_dtensor(mask_local.reshape(-1).to(torch.int8), p).full_tensor().bool()


def _build(algo, world):
    """(model, optimizer, decisions()) for one algorithm."""
    torch.manual_seed(0)
    model = _mesh_and_shard(OddNet().double(), world)
    if algo == "masked_adamw":
        opt = MaskedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, block_size=6)
        for i, p in enumerate(model.parameters()):  # a fixed, irregular set of active blocks
            opt.set_mask(p, torch.arange(opt.num_blocks(p)) % (i + 2) != 0)
        return model, opt, lambda: {n: opt.block_mask(p).clone() for n, p in model.named_parameters()}
    if algo == "id3":
        from winnow.id3 import ID3

        opt = ID3(list(model.named_parameters()), budget=100, total_steps=STEPS, lr=1e-2, weight_decay=0.1)
        return model, opt, lambda: {n: _gathered(m, p) for (n, p), m in zip(model.named_parameters(),
                                                                             opt.masks().values())}
    raise ValueError(algo)


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


def run(rank, world, algo, checkpoint_dir=None, resume=False, sparse_file=None):
    """Trains STEPS steps; with checkpoint_dir, stops after SPLIT and saves (resume=False) or loads
    and trains the rest (resume=True)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, opt, decisions = _build(algo, world)
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
    if sparse_file is not None and hasattr(opt, "save_sparse"):
        opt.save_sparse(sparse_file)
    return {"params": {n: _full(p).detach().clone() for n, p in model.named_parameters()},
            "decisions": decisions(), "state_bytes": opt.state_bytes(), "collectives": collectives}


def scenario(rank, world, algo, folder):
    """On each rank: an uninterrupted run; then a run that stops at SPLIT and saves a DCP
    checkpoint, and, on a fresh process group, one that loads it and trains the rest."""
    import torch.distributed as dist

    whole = run(rank, world, algo, sparse_file=f"{folder}/sharded.safetensors")
    run(rank, world, algo, checkpoint_dir=f"{folder}/ckpt")
    dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"file://{folder}/fresh_group", rank=rank, world_size=world)
    return whole, run(rank, world, algo, checkpoint_dir=f"{folder}/ckpt", resume=True)


def _run_scenario(tmp_path, algo):
    """(each rank's uninterrupted result, one process's); the resumed runs checked equal here."""
    (tmp_path / "out").mkdir()
    results = run_ranks(scenario, tmp_path / "out", algo, str(tmp_path), world=WORLD)
    for whole, resumed in results:
        for n, p in whole["params"].items():
            torch.testing.assert_close(resumed["params"][n], p, rtol=0, atol=0)
        for n, d in whole["decisions"].items():
            assert torch.equal(resumed["decisions"][n], d)
    return [whole for whole, _ in results], run(0, 1, algo, sparse_file=str(tmp_path / "single.safetensors"))


def _equals_one_process(ranks, single):
    for r in ranks:
        for n, p in single["params"].items():
            torch.testing.assert_close(r["params"][n], p, rtol=1e-9, atol=1e-12)
    torch.manual_seed(0)
    init = {n: p.detach() for n, p in OddNet().double().named_parameters()}
    assert any(not torch.equal(single["params"][n], init[n]) for n in init), "training changed nothing"


def test_masked_adamw_on_shards_equals_one_process_and_resumes_through_dcp(tmp_path):
    ranks, single = _run_scenario(tmp_path, "masked_adamw")
    _equals_one_process(ranks, single)
    for r in ranks:
        assert r["collectives"] == 0  # the step reads and writes local shards only
    for n, mask in single["decisions"].items():  # each rank holds the blocks its shard touches
        assert torch.equal(ranks[0]["decisions"][n] | ranks[1]["decisions"][n], mask)
    assert not torch.equal(ranks[0]["decisions"]["q.weight"], single["decisions"]["q.weight"])  # not the other's
    assert sum(r["state_bytes"] for r in ranks) < 1.3 * single["state_bytes"]  # each rank its share


def test_id3_on_shards_unmasks_what_one_process_does_and_saves_its_file(tmp_path):
    from safetensors import safe_open

    ranks, single = _run_scenario(tmp_path, "id3")
    _equals_one_process(ranks, single)
    for r in ranks:
        assert r["collectives"] == STEPS  # one all-gather of candidates a step, nothing else
        for n, m in single["decisions"].items():  # the same unmasked set on every rank and in one process
            assert torch.equal(r["decisions"][n], m)
    assert sum(int(m.sum()) for m in single["decisions"].values()) == 100
    with safe_open(tmp_path / "sharded.safetensors", "pt") as a, safe_open(tmp_path / "single.safetensors", "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), rtol=1e-9, atol=1e-12)
