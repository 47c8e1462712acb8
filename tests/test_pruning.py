"""OBA importance inside Torch-Pruning: group scores from the structure sums, and the iterative
schedule to a FLOPs target with physical removal."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

tp = pytest.importorskip("torch_pruning")

from winnow.oba import parameter_scores, structure_scores  # noqa: E402
from winnow.pruning import OBAImportance, flops_and_params, prune_iteratively  # noqa: E402


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(12 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 4))


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 12, 12, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


def test_group_importance_is_the_sum_of_its_layers_structure_scores():
    model = cnn().eval()
    data = batches()
    imp = OBAImportance(loss_fn, data, curvature="full", group_reduction="sum", normalizer=None)
    imp.refresh(model)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 12, 12))
    group = dg.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(8)))
    sums = structure_scores(model, parameter_scores(model, loss_fn, data))
    want = sums["0"]["out"].abs() + sums["1"]["out"].abs() + sums["4"]["in"].abs()
    torch.testing.assert_close(imp(group), want.float(), rtol=1e-5, atol=1e-8)


def test_prune_iteratively_removes_channels_until_the_target():
    model = cnn().eval()
    example = torch.randn(1, 1, 12, 12)
    base_flops, base_params = flops_and_params(model, example)
    imp = OBAImportance(loss_fn, batches())
    history = prune_iteratively(model, example, imp, flops_ratio=0.5, before_step=imp.refresh,
                             ignored_layers=[model[11]])
    flops, params = flops_and_params(model, example)
    assert flops <= 0.5 * base_flops and params < base_params
    assert history[-1]["flops"] == pytest.approx(flops / base_flops)
    assert len(history) > 1  # re-scored and pruned in several steps
    assert model(torch.randn(3, 1, 12, 12)).shape == (3, 4) and model[11].out_features == 4


def test_prune_iteratively_to_a_parameter_target():
    model = cnn().eval()
    example = torch.randn(1, 1, 12, 12)
    _, base_params = flops_and_params(model, example)
    imp = OBAImportance(loss_fn, batches(1))
    prune_iteratively(model, example, imp, params_ratio=0.6, before_step=imp.refresh, ignored_layers=[model[11]])
    assert flops_and_params(model, example)[1] <= 0.6 * base_params


def test_importance_needs_refresh_and_valid_config():
    model = cnn()
    imp = OBAImportance(loss_fn, batches())
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 12, 12))
    group = dg.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[0, 1])
    with pytest.raises(RuntimeError, match="refresh"):
        imp(group)
    with pytest.raises(ValueError, match="curvature"):
        OBAImportance(loss_fn, batches(), curvature="exact")
    with pytest.raises(ValueError, match="batches"):
        OBAImportance(loss_fn, [])
    with pytest.raises(ValueError, match="flops_ratio"):
        prune_iteratively(model, torch.randn(1, 1, 12, 12), imp, flops_ratio=1.5)
    with pytest.raises(ValueError, match="give flops_ratio"):
        prune_iteratively(model, torch.randn(1, 1, 12, 12), imp)
