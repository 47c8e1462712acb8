"""IST under torch.distributed (gloo, 2 CPU processes, DDP): the same layers train on every rank,
scores stay identical, and training equals one process with the same global batch."""
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from distributed import run_ranks  # noqa: E402
from test_ist import tiny_bert_lora  # noqa: E402

from winnow.ist import ISTController  # noqa: E402
from winnow.optim import MaskedAdamW  # noqa: E402

pytestmark = pytest.mark.slow  # spawns processes

STEPS, WORLD = 12, 2
gen = torch.Generator().manual_seed(3)
BATCHES = [torch.randint(0, 60, (4, 7), generator=gen) for _ in range(STEPS)]
PROBE = torch.randint(0, 60, (4, 7), generator=gen)


def train(rank: int, world: int, rng_seed: int):
    """STEPS steps of LoRA+IST on this rank's shard of every batch (rows rank::world). The
    controller's own seed differs per rank on purpose: rank 0's draws must win everywhere."""
    torch.manual_seed(0)
    model = tiny_bert_lora(layers=4).double()  # float64: one process vs two differ only by rounding
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    opt = MaskedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ctl = ISTController(model, update_ratio=0.5, score_interval=3, seed=rng_seed + rank, optimizer=opt)

    @torch.no_grad()
    def probe():
        return model(input_ids=PROBE[rank::world]).last_hidden_state.pow(2).mean()

    for step, ids in enumerate(BATCHES):
        ctl.begin_step(step, probe)
        net(input_ids=ids[rank::world]).last_hidden_state.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    actives = [h["active"] for h in ctl.history if "active" in h]
    params = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return {"actives": actives, "scores": ctl.scores.clone(), "params": params}


def test_ist_under_ddp_is_rank_consistent_and_equals_one_process(tmp_path):
    ranks = run_ranks(train, tmp_path, 7, world=WORLD)  # seeds 7 and 8: rank 0's draws are broadcast
    r0, r1 = ranks
    assert r0["actives"] == r1["actives"]
    assert len({tuple(a) for a in r0["actives"]}) > 1  # the active set really changed between steps
    assert torch.equal(r0["scores"], r1["scores"]) and r0["scores"].abs().sum() > 0
    for n in r0["params"]:
        assert torch.equal(r0["params"][n], r1["params"][n]), n
    single = train(0, 1, 7)
    assert single["actives"] == r0["actives"]
    torch.testing.assert_close(single["scores"], r0["scores"], rtol=1e-10, atol=1e-12)
    for n in r0["params"]:
        torch.testing.assert_close(single["params"][n], r0["params"][n], rtol=1e-9, atol=1e-10)
