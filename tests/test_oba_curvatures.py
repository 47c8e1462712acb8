"""The removal scores' definitions, checked against brute force in float64: the first-order term's
sign, "self" = 1/2 theta_S^T H_SS theta_S from torch.autograd.functional.hessian per structure
(BatchNorm folded into its conv, LayerNorm, grouped and transposed convs, attention heads), and
"fisher" = 1/2 mean_n (theta_S . grad l_n)^2 from per-example gradients by torch.func.vmap."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from winnow.oba import parameter_scores, structure_scores
from winnow.oba_self import self_scores
from winnow.oba_structures import structures
from winnow.pruning import OBAImportance


def loss_fn(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


class SeqMLP(nn.Module):
    """A Linear over (batch, tokens, features), LayerNorm, GELU, a mean over tokens."""

    def __init__(self):
        super().__init__()
        self.proj, self.norm, self.head = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(F.gelu(self.norm(self.proj(x))).mean(1))


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.mha(x, x, x, need_weights=False)[0].mean(1))


class Shared(nn.Module):
    """One Linear applied twice: its channels are scored by the parameter-space route."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def cnn():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 3))


def grouped():
    return nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2),
                         nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


class PaddedAndSized(nn.Module):
    """A reflect-padded conv, and a transposed conv whose output size forward chooses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)
        self.head = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.up(torch.tanh(self.conv(x)), output_size=(8, 8))).flatten(1))


def _padded_sets(model):
    sets = {}
    for c in range(4):
        sets[("conv", c)] = {"conv.weight": (c,), "conv.bias": (c,)}
    for c in range(3):  # transposed: weight (in 4, out 3, k, k)
        sets[("up", c)] = {"up.weight": (slice(None), c), "up.bias": (c,)}
        sets[("head", c)] = {"head.weight": (c,), "head.bias": (c,)}
    return sets


def _cnn_sets(model):
    sets = {}
    for c in range(4):  # conv 0's channel: its row and bias and the BatchNorm's pair
        sets[("0", c)] = {"0.weight": (c,), "0.bias": (c,), "1.weight": (c,), "1.bias": (c,)}
    for c in range(3):
        sets[("4", c)] = {"4.weight": (c,), "4.bias": (c,)}
        sets[("7", c)] = {"7.weight": (c,), "7.bias": (c,)}
    return sets


def _seq_sets(model):
    sets = {}
    for c in range(6):
        sets[("proj", c)] = {"proj.weight": (c,), "proj.bias": (c,)}
        sets[("norm", c)] = {"norm.weight": (c,), "norm.bias": (c,)}
    for c in range(3):
        sets[("head", c)] = {"head.weight": (c,), "head.bias": (c,)}
    return sets


def _grouped_sets(model):
    sets = {}
    for c in range(4):
        sets[("0", c)] = {"0.weight": (c,), "0.bias": (c,)}
        # transposed, groups 2: weight (in 4, out/groups 2, k, k); output c = 2 g + j reads input rows 2g, 2g+1
        g, j = divmod(c, 2)
        sets[("2", c)] = {"2.weight": (slice(2 * g, 2 * g + 2), j), "2.bias": (c,)}
    for c in range(3):
        sets[("5", c)] = {"5.weight": (c,), "5.bias": (c,)}
    return sets


def _attn_sets(model):
    sets = {}
    for h in range(2):
        rows = [k * 8 + h * 4 + i for k in range(3) for i in range(4)]
        sets[("mha", h)] = {"mha.in_proj_weight": (rows,), "mha.in_proj_bias": (rows,),
                            "mha.out_proj.weight": (slice(None), slice(4 * h, 4 * h + 4))}
    for c in range(3):
        sets[("head", c)] = {"head.weight": (c,), "head.bias": (c,)}
    return sets


def _shared_sets(model):
    sets = {("lin", c): {"lin.weight": (c,), "lin.bias": (c,)} for c in range(4)}
    sets.update({("head", c): {"head.weight": (c,), "head.bias": (c,)} for c in range(3)})
    return sets


CASES = {  # model, input shape, the structures written out by hand
    "cnn_bn_eval": (cnn, (5, 2, 4, 4), _cnn_sets, False),
    "cnn_bn_train": (cnn, (5, 2, 4, 4), _cnn_sets, True),
    "seq_linear_layernorm": (SeqMLP, (5, 3, 4), _seq_sets, False),
    "grouped_and_transposed_conv": (grouped, (5, 2, 4, 4), _grouped_sets, False),
    "padding_mode_and_output_size": (PaddedAndSized, (5, 2, 4, 4), _padded_sets, False),
    "attention_heads": (Attn, (4, 5, 8), _attn_sets, False),
    "shared_layer": (Shared, (5, 4), _shared_sets, False),
}


def make(case, seed=0):
    ctor, shape, sets, train = CASES[case]
    torch.manual_seed(seed)
    model = ctor().double().train(train)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    for p in model.parameters():  # away from the initialisation's zeros and ones
        p.data.add_(0.3 * torch.randn_like(p))
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randint(0, 3, (shape[0],))
    return model, (x, y), sets(model)


def _masks(model, structure):
    """{param name: 0/1 float64 mask of the structure's entries}."""
    out = {}
    for n, p in model.named_parameters():
        m = torch.zeros_like(p)
        if n in structure:
            m[structure[n]] = 1
        out[n] = m
    return out


def _flat(model, tensors):
    return torch.cat([tensors[n].flatten() for n, _ in model.named_parameters()])


def _explicit_hessian(model, batch):
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes, sizes = [p.shape for p in params.values()], [p.numel() for p in params.values()]
    buffers = dict(model.named_buffers())

    def f(flat):
        unflat = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return loss_fn(lambda x: functional_call(model, {**unflat, **{k: v.clone() for k, v in buffers.items()}},
                                                  (x,)), batch)

    theta = _flat(model, params)
    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no double backward
        return theta, hessian(f, theta)


@pytest.mark.parametrize("case", list(CASES))
def test_self_is_each_structures_own_quadratic(case):
    model, batch, sets = make(case)
    theta, H = _explicit_hessian(model, batch)
    scores = parameter_scores(model, loss_fn, [batch], curvature="self")
    sums = structure_scores(model, scores)
    for (module, c), structure in sets.items():
        m = _flat(model, _masks(model, structure))
        own = H @ (theta * m)
        want = 0.5 * (theta * m) @ own
        got = sums[module]["heads" if case == "attention_heads" and module == "mha" else "out"][c]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        # and per entry: 1/2 theta_i (H_SS theta_S)_i on the structure's entries
        per_entry = torch.cat([scores[n].flatten() if n in scores else torch.zeros(p.numel(), dtype=torch.float64)
                               for n, p in model.named_parameters()])
        torch.testing.assert_close(per_entry * m, 0.5 * theta * own * m, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["cnn_bn_eval", "cnn_bn_train", "seq_linear_layernorm"])
def test_self_batches_the_directions_exactly(case):
    """Directions a channel at a time or all of a module's at once give the same scores."""
    model, batch, _ = make(case)
    found = structures(model)
    one = self_scores(model, loss_fn, batch, found, max_elements=1)
    many = self_scores(model, loss_fn, batch, found)
    for n in one:
        torch.testing.assert_close(one[n], many[n], rtol=1e-12, atol=1e-14)


def test_self_leaves_a_train_mode_batchnorms_statistics_as_one_forward_does():
    model, batch, _ = make("cnn_bn_train")
    twin = copy.deepcopy(model)
    parameter_scores(model, loss_fn, [batch], curvature="self")
    twin(batch[0])
    for (n, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


def _per_example_grads(model, batch):
    """{name: (N, *param)} gradients of each example's loss, by vmap over single examples."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def one(p, x, y):
        return F.cross_entropy(functional_call(model, {**p, **buffers}, (x[None],)), y[None])

    return vmap(grad(one), in_dims=(None, 0, 0))(params, *batch)


@pytest.mark.parametrize("case", ["cnn_bn_eval", "seq_linear_layernorm", "grouped_and_transposed_conv",
                                  "padding_mode_and_output_size"])
def test_fisher_is_its_definition_from_per_example_gradients(case):
    model, batch, sets = make(case)
    g = _per_example_grads(model, batch)
    params = {n: p.detach() for n, p in model.named_parameters()}
    scores = parameter_scores(model, loss_fn, [batch], curvature="fisher")
    sums = structure_scores(model, scores)
    for (module, c), structure in sets.items():
        masks = _masks(model, structure)
        a = sum((g[n] * (params[n] * masks[n])).flatten(1).sum(1) for n in params)  # theta_S . grad l_n
        torch.testing.assert_close(sums[module]["out"][c], 0.5 * (a * a).mean(), rtol=1e-10, atol=1e-12)
        for n in structure:  # per entry: 1/2 theta_i mean_n(a_n grad_i l_n)
            want = 0.5 * params[n] * (a.view(-1, *[1] * params[n].dim()) * g[n]).mean(0)
            torch.testing.assert_close(scores[n] * masks[n], want * masks[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("curvature, want", [("full", 1.5), ("self", 1.5), ("fisher", 1.5), ("oba", 1.0)])
@pytest.mark.parametrize("method", ["auto", "double_backward"])
def test_first_order_removal_of_one_weight(curvature, want, method):
    """loss (w - 2)^2 / 2 at w = 1: removing w (w -> 0) raises the loss by 2 - 0.5 = 1.5, which is
    -theta g + 1/2 theta H theta = 1 + 0.5 (the Fisher estimate of the quadratic is g^2 = 1 here too;
    "oba" has no curvature left on a linear model: its first-order term alone)."""
    model = nn.Linear(1, 1, bias=False).double()
    model.weight.data.fill_(1.0)
    batch = torch.ones(1, 1, dtype=torch.float64)

    def loss(m, x):
        return ((m(x) - 2) ** 2).mean() / 2

    scores = parameter_scores(model, loss, [batch], curvature=curvature, first_order=True, method=method)
    assert scores["weight"].item() == pytest.approx(want, abs=1e-12)
    with torch.no_grad():
        before = loss(model, batch).item()
        model.weight.zero_()
        assert loss(model, batch).item() - before == pytest.approx(1.5)  # the true change


def test_fisher_and_self_refuse_what_they_cannot_score():
    model, batch, _ = make("attention_heads")
    with pytest.raises(ValueError, match="MultiheadAttention"):
        parameter_scores(model, loss_fn, [batch], curvature="fisher")
    with pytest.raises(KeyError, match="no structure"):
        parameter_scores(nn.Sequential(nn.Linear(2, 2), nn.Embedding(3, 2)), lambda m, b: m[0](b).sum(),
                         [torch.ones(1, 2)], curvature="self", params=["1.weight"])

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    with pytest.raises(ValueError, match="more than once"):
        parameter_scores(Twice(), lambda m, x: m(x).pow(2).mean(), [torch.randn(4, 3)], curvature="fisher")


@pytest.mark.parametrize("curvature", ["self", "fisher"])
def test_oba_importance_scores_a_channel_by_its_own_structure(curvature):
    """Through Torch-Pruning: the group of conv 0's channel c (conv out, BatchNorm, conv 4's input)
    is scored by conv 0's "out" entry alone (BatchNorm folded in; normalizer off)."""
    import torch_pruning as tp

    model, batch, _ = make("cnn_bn_eval")
    imp = OBAImportance(loss_fn, [batch], curvature=curvature, normalizer=None)
    imp.refresh(model)
    sums = structure_scores(model, parameter_scores(model, loss_fn, [batch], curvature=curvature))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=batch[0])
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(4)))
    torch.testing.assert_close(imp(group), sums["0"]["out"].abs().to(imp(group).dtype))


class _Clamped(nn.Module):
    """hardswish / hardsigmoid written with clamp: twice differentiable, the same values."""

    def __init__(self, swish: bool):
        super().__init__()
        self.swish = swish

    def forward(self, x):
        s = torch.clamp(x + 3, 0, 6) / 6
        return x * s if self.swish else s


@pytest.mark.parametrize("curvature", ["full", "self"])
def test_hardswish_and_hardsigmoid_are_scored_through_their_curvature(curvature):
    """torch's Hardswish / Hardsigmoid kernels have no double backward (MobileNetV3 uses both,
    in place): scores equal those of the clamp-written twin, whose Hessian autograd has."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Hardswish(inplace=True), nn.Linear(6, 5), nn.Hardsigmoid(inplace=True),
                          nn.Linear(5, 3)).double()
    twin = copy.deepcopy(model)
    twin[1], twin[3] = _Clamped(True), _Clamped(False)
    batch = (4 * torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,)))  # every region of the clamps
    got = parameter_scores(model, loss_fn, [batch], curvature=curvature)
    want = parameter_scores(twin, loss_fn, [batch], curvature=curvature, method="double_backward")
    assert model[1].inplace and model[3].inplace  # restored
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-12, atol=1e-14)
    theta, H = _explicit_hessian(twin, batch)
    assert H.abs().max() > 0


@pytest.mark.parametrize("curvature", ["self", "fisher"])
def test_a_layer_the_forward_skips_scores_zero(curvature):
    """Removing a layer that does not run (an auxiliary head in eval mode) costs nothing."""
    model, batch, _ = make("seq_linear_layernorm")
    model.unused = nn.Linear(6, 2).double()
    scores = parameter_scores(model, loss_fn, [batch], curvature=curvature)
    assert scores["unused.weight"].abs().max() == 0 and scores["proj.weight"].abs().max() > 0


@pytest.mark.parametrize("curvature", ["self", "fisher"])
def test_a_float32_model_scores_as_its_float64_twin(curvature):
    """Fisher forms its products in the model's dtype (no full float64 copy of the activations)
    and accumulates in float64: float32 scores match the float64 ones to float32 rounding."""
    model, (x, y), _ = make("cnn_bn_eval")
    want = parameter_scores(model, loss_fn, [(x, y)], curvature=curvature)
    got = parameter_scores(model.float(), loss_fn, [(x.float(), y)], curvature=curvature)
    for n in want:
        assert got[n].dtype == torch.float64
        torch.testing.assert_close(got[n], want[n], rtol=2e-4, atol=1e-6 * want[n].abs().max().item())


def test_public_hvp_differentiates_hardswish_and_hardsigmoid_twice():
    """winnow.hvp.hvp on torch's Hardswish / Hardsigmoid (no double backward of their own,
    here in place): the Hessian-vector product of the clamp-written twin; the modules restored."""
    from winnow.hvp import hvp

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Hardswish(inplace=True), nn.Linear(6, 5), nn.Hardsigmoid(inplace=True),
                          nn.Linear(5, 3)).double()
    twin = copy.deepcopy(model)
    twin[1], twin[3] = _Clamped(True), _Clamped(False)
    batch = (4 * torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,)))
    vectors = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    got, want = hvp(model, loss_fn, batch, vectors), hvp(twin, loss_fn, batch, vectors)
    assert model[1].inplace and model[3].inplace and not model[1]._forward_hooks
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-12, atol=1e-14)
    assert max(w.abs().max() for w in want.values()) > 0
