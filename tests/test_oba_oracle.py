"""The OBA oracle benchmark's pieces on a tiny model: ranks with ties, the removal oracle, the rows."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torch_pruning")
from benchmarks import oba_oracle  # noqa: E402


def test_spearman_uses_average_ranks_for_ties():
    a = torch.tensor([0.0, 0.0, 1.0, 3.0, 2.0])
    assert oba_oracle.average_ranks(a).tolist() == [0.5, 0.5, 2.0, 4.0, 3.0]
    b = torch.tensor([10.0, 20.0, 30.0, 50.0, 40.0])
    ra, rb = oba_oracle.average_ranks(a), oba_oracle.average_ranks(b)
    want = torch.corrcoef(torch.stack([ra, rb]))[0, 1]  # Pearson of the ranks
    assert oba_oracle.spearman(a, b) == pytest.approx(float(want))
    assert oba_oracle.spearman(b, -b) == pytest.approx(-1.0)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


def test_true_cost_is_the_loss_with_the_channel_zeroed_and_the_model_is_restored():
    model = tiny()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x, y = torch.randn(20, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    before = copy.deepcopy(model.state_dict())
    layers = oba_oracle.channels(model)
    assert [s.name for s in layers] == ["0", "4"]  # the classifier (6) is not pruned
    costs = oba_oracle.true_costs(model, layers, x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    removed = copy.deepcopy(model)
    with torch.no_grad():  # conv channel 1 = its row and the BatchNorm's pair
        removed[0].weight[1] = 0
        removed[1].weight[1] = 0
        removed[1].bias[1] = 0
    base = F.cross_entropy(model(x), y)
    assert costs["0"][1].item() == pytest.approx((F.cross_entropy(removed(x), y) - base).item(), abs=1e-12)
    assert costs["4"].shape == (5,)


def test_study_rows_rank_every_score():
    model = tiny().float()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 1, 4, 4, generator=g), torch.randint(0, 3, (300,), generator=g)
    rows, layers = oba_oracle.study("tiny", model, ((x, y), (x[:100], y[:100])), draws=2, batch_size=16,
                                    score_batches=2)
    assert [r["score"] for r in rows] == oba_oracle.SCORES and layers == {"0": 3, "4": 5}
    for r in rows:
        for key in ("rho 0", "rho 4", "global rho (none)", "global rho (mean)", "global rho (gaussian)"):
            assert -1 <= r[key] <= 1 and r[key + " sd"] >= 0
