"""Under FSDP2 (fully_shard, gloo, 2 CPU processes): after K steps the full parameters equal one
unsharded process with the same global batch (float64, 1e-9), every decision is the same on
every rank and in the single process, the optimizer steps issue no collective of their own
beyond the ones stated, and a torch.distributed.checkpoint save / load on a fresh process group
continues exactly like an uninterrupted run."""
import pytest
import torch
from distributed import run_ranks, tear_down_group

from winnow.optim import MaskedAdamW

pytestmark = pytest.mark.slow  # spawns processes

WORLD, STEPS, SPLIT = 2, 6, 3  # SPLIT: steps before the checkpoint in the resumed run
gen = torch.Generator().manual_seed(5)
X = [torch.randn(8, 16, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
Y = [torch.randn(8, 5, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
IDS = [torch.randint(0, 60, (4, 7), generator=gen) for _ in range(STEPS)]  # IST's tiny BERT
PROBE = torch.randint(0, 60, (4, 7), generator=gen)
FORWARD_COLLECTIVES = {}  # issued by FSDP2 in IST's probe forwards (not winnow's): subtracted


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


class Algo:
    """One algorithm's set-up: model, optimizer and what the test reads and saves."""

    def __init__(self, model, opt, decisions, after_step=None, extra_loss=None, extra_state=None, export=None,
                 before_step=None, loss=None):
        self.model, self.opt, self.decisions = model, opt, decisions
        self.before_step = before_step or (lambda step: None)
        self.loss = loss or (lambda step, rank, world: (model(X[step][rank::world]) - Y[step][rank::world]).pow(2).mean())
        self.after_step = after_step or (lambda step: None)
        self.extra_loss = extra_loss or (lambda: 0.0)
        self.extra_state = extra_state or {}  # name -> object with state_dict / load_state_dict
        self.export = export or (lambda path: None)


def _build(algo, world, rank=0) -> Algo:
    torch.manual_seed(0)
    if algo == "masked_adamw":
        model = _mesh_and_shard(OddNet().double(), world)
        opt = MaskedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, block_size=6)
        for i, p in enumerate(model.parameters()):  # a fixed, irregular set of active blocks
            opt.set_mask(p, torch.arange(opt.num_blocks(p)) % (i + 2) != 1)  # v.bias: one block, in both shards
        return Algo(model, opt, lambda: {n: opt.block_mask(p).clone() for n, p in model.named_parameters()})
    if algo == "id3":
        from winnow.id3 import ID3

        model = _mesh_and_shard(OddNet().double(), world)
        opt = ID3(list(model.named_parameters()), budget=100, total_steps=STEPS, lr=1e-2, weight_decay=0.1)
        return Algo(model, opt, lambda: {n: _gathered(m, p) for (n, p), m in zip(model.named_parameters(),
                                                                                  opt.masks().values())},
                    export=opt.save_sparse)
    if algo == "adalora":
        from winnow.adalora import AdaLoRA

        model = OddNet().double()
        ada = AdaLoRA(model, ["q", "k", "v"], init_r=4, target_r=2, total_step=STEPS, tinit=1, tfinal=2, deltaT=1,
                      orth_reg_in_output=False)  # injected first, then sharded
        model = _mesh_and_shard(model, world)
        opt = MaskedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        return Algo(model, opt, lambda: {"ranks": ada.ranks(), "pattern": ada.rank_pattern()},
                    after_step=ada.update_and_allocate, extra_loss=ada.orth_reg_loss,
                    extra_state={"adalora": ada}, export=ada.save_pretrained)
    if algo == "ist":
        from test_ist import tiny_bert_lora

        from winnow.ist import ISTController

        model = tiny_bert_lora(layers=4).double()
        if world > 1:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world,))
            for layer in model.base_model.model.encoder.layer:  # adapters share a unit with frozen weights
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
        opt = MaskedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
        # the controller's seed differs per rank on purpose: rank 0's generator must win everywhere
        ctl = ISTController(model, update_ratio=0.5, score_interval=3, seed=7 + rank, optimizer=opt,
                            state_policy="drop")

        @torch.no_grad()
        def probe():  # a forward: FSDP2 gathers the parameters for it, which the count leaves out
            from torch.distributed.tensor.debug import CommDebugMode

            with CommDebugMode() as fsdp_forward:
                loss = model(input_ids=PROBE[rank::world]).last_hidden_state.pow(2).mean()
            for op, n in fsdp_forward.get_comm_counts().items():
                FORWARD_COLLECTIVES[op] = FORWARD_COLLECTIVES.get(op, 0) + n
            return loss

        return Algo(model, opt, lambda: {"active": {h["step"]: h["active"] for h in ctl.history if "active" in h},
                                         "scores": ctl.scores.tolist()},
                    before_step=lambda step: ctl.begin_step(step, probe), extra_state={"ist": ctl},
                    loss=lambda step, rank, world: model(input_ids=IDS[step][rank::world]).last_hidden_state.pow(2).mean())
    raise ValueError(algo)


def _train(algo: Algo, rank, world, steps):
    from torch.distributed.tensor.debug import CommDebugMode

    collectives = {}  # what winnow issued around the forward and backward (FSDP2's own are inside them)
    for step in steps:
        with CommDebugMode() as before:
            algo.before_step(step)
        loss = algo.loss(step, rank, world) + algo.extra_loss()
        loss.backward()
        with CommDebugMode() as after:
            algo.opt.step()
            algo.after_step(step)
        for comm in (before, after):
            for op, n in comm.get_comm_counts().items():
                n -= FORWARD_COLLECTIVES.pop(op, 0) if comm is before else 0
                if n == 0:
                    continue
                name = str(op).split(".")[-1].strip("_")
                collectives[name] = collectives.get(name, 0) + n
        algo.opt.zero_grad()
    return collectives


def run(rank, world, algo_name, checkpoint_dir=None, resume=False, export=None):
    """Trains STEPS steps; with checkpoint_dir, stops after SPLIT and saves (resume=False) or loads
    and trains the rest (resume=True)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    algo = _build(algo_name, world, rank)
    steps = range(STEPS)
    if checkpoint_dir is not None and not resume:
        steps = range(SPLIT)
    if resume:
        model_sd, optim_sd = get_state_dict(algo.model, algo.opt)
        state = {"model": model_sd, "optim": optim_sd, **{k: v.state_dict() for k, v in algo.extra_state.items()}}
        dcp.load(state, checkpoint_id=checkpoint_dir)
        set_state_dict(algo.model, algo.opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        for k, v in algo.extra_state.items():
            v.load_state_dict(state[k])
        steps = range(SPLIT, STEPS)
    collectives = _train(algo, rank, world, steps)
    if checkpoint_dir is not None and not resume:
        model_sd, optim_sd = get_state_dict(algo.model, algo.opt)
        dcp.save({"model": model_sd, "optim": optim_sd, **{k: v.state_dict() for k, v in algo.extra_state.items()}},
                 checkpoint_id=checkpoint_dir)
    if export is not None:
        algo.export(export)
    return {"params": {n: _full(p).detach().clone() for n, p in algo.model.named_parameters()},
            "decisions": algo.decisions(), "state_bytes": algo.opt.state_bytes(), "collectives": collectives}


def scenario(rank, world, algo, folder):
    """On each rank: an uninterrupted run; then a run that stops at SPLIT and saves a DCP
    checkpoint, and, on a fresh process group, one that loads it and trains the rest."""
    import torch.distributed as dist

    whole = run(rank, world, algo, export=f"{folder}/sharded_export")
    run(rank, world, algo, checkpoint_dir=f"{folder}/ckpt")
    tear_down_group()
    dist.init_process_group("gloo", init_method=f"file://{folder}/fresh_group", rank=rank, world_size=world)
    return whole, run(rank, world, algo, checkpoint_dir=f"{folder}/ckpt", resume=True)


def _same_decisions(a: dict, b: dict) -> None:
    """Equal decisions; a per-step record ({step: ...}) of a resumed run is compared on its steps."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict) and all(isinstance(step, int) for step in a[k]):
            assert a[k] and all(b[k][step] == v for step, v in a[k].items()), k
        else:
            assert a[k] == b[k], k


def _run_scenario(tmp_path, algo):
    """(each rank's uninterrupted result, one process's); the resumed runs checked equal here."""
    (tmp_path / "out").mkdir()
    results = run_ranks(scenario, tmp_path / "out", algo, str(tmp_path), world=WORLD)
    for whole, resumed in results:
        for n, p in whole["params"].items():
            torch.testing.assert_close(resumed["params"][n], p, rtol=0, atol=0)
        _same_decisions(resumed["decisions"], whole["decisions"])
    return [whole for whole, _ in results], run(0, 1, algo, export=str(tmp_path / "single_export"))


def _equals_one_process(ranks, single, algo):
    # float64, equal up to the order of its sums (a shard's matmuls and reductions are blocked
    # differently from the whole's): 1e-9 of each tensor's scale, not of each element, since
    # AdamW's m / sqrt(v) carries a rounding-level difference into an entry near zero whole.
    for r in ranks:
        for n, p in single["params"].items():
            torch.testing.assert_close(r["params"][n], p, rtol=1e-9, atol=1e-9 * float(p.abs().max()) + 1e-15,
                                       msg=lambda m, n=n: f"{n}: {m}")
    init = {n: p.detach() for n, p in _build(algo, 1).model.named_parameters()}
    assert init.keys() == single["params"].keys()
    assert any(not torch.equal(single["params"][n], init[n]) for n in init), "training changed nothing"


def test_masked_adamw_on_shards_equals_one_process_and_resumes_through_dcp(tmp_path):
    ranks, single = _run_scenario(tmp_path, "masked_adamw")
    _equals_one_process(ranks, single, "masked_adamw")
    for r in ranks:
        assert r["collectives"] == {}  # the step reads and writes local shards only
    for n, mask in single["decisions"].items():  # each rank holds the blocks its shard touches
        assert torch.equal(ranks[0]["decisions"][n] | ranks[1]["decisions"][n], mask)
    assert not torch.equal(ranks[0]["decisions"]["q.weight"], single["decisions"]["q.weight"])  # not the other's
    assert sum(r["state_bytes"] for r in ranks) < 1.3 * single["state_bytes"]  # each rank its share


def test_id3_on_shards_unmasks_what_one_process_does_and_saves_its_file(tmp_path):
    from safetensors import safe_open

    ranks, single = _run_scenario(tmp_path, "id3")
    _equals_one_process(ranks, single, "id3")
    for r in ranks:
        assert r["collectives"] == {"allgather": STEPS}  # one all-gather of candidates a step, nothing else
        _same_decisions(r["decisions"], single["decisions"])  # the same unmasked set on every rank and in one process
    assert sum(int(m.sum()) for m in single["decisions"].values()) == 100
    with safe_open(tmp_path / "sharded_export", "pt") as a, safe_open(tmp_path / "single_export", "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), rtol=1e-9, atol=1e-12)


def test_adalora_on_shards_allocates_like_one_process_and_saves_peft_folder(tmp_path):
    pytest.importorskip("peft")
    import json

    from safetensors.torch import load_file

    ranks, single = _run_scenario(tmp_path, "adalora")
    _equals_one_process(ranks, single, "adalora")
    for r in ranks:
        assert r["decisions"] == single["decisions"]  # ranks and rank pattern
        # update_and_allocate: one all-reduce of the triplet parts per mask step (steps 1-3), nothing else
        assert r["collectives"] == {"allreduce": 3}
    assert sorted(single["decisions"]["ranks"].values()) != [4, 4, 4]  # ranks were pruned
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("sharded_export", "single_export"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12)
    configs = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("sharded_export", "single_export")]
    assert configs[0] == configs[1]


def test_ist_on_shards_switches_the_same_layers_as_one_process(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    ranks, single = _run_scenario(tmp_path, "ist")
    _equals_one_process(ranks, single, "ist")
    active = single["decisions"]["active"]
    assert sorted(active) == list(range(STEPS)) and len({tuple(a) for a in active.values()}) > 1  # it switched
    for r in ranks:
        assert r["decisions"]["active"] == active
        torch.testing.assert_close(torch.tensor(r["decisions"]["scores"]), torch.tensor(single["decisions"]["scores"]),
                                   rtol=1e-10, atol=1e-12)
        # a broadcast per draw (one a step, one a probe) and an all-reduce of each probe's loss; no all-gather
        assert set(r["collectives"]) == {"broadcast", "allreduce"}
