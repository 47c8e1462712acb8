"""Hessian-vector products and OBA scores against the explicit float64 Hessian from
torch.autograd.functional.hessian (reverse-over-reverse), on tiny MLP (LayerNorm), CNN
(Conv-BN-ReLU-Pool-Linear) and attention models."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from winnow.hvp import ggn_vp, hvp
from winnow.oba import parameter_scores, structure_scores, unstructured_masks


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.norm(x + self.mha(x, x, x, need_weights=False)[0])
        return self.head(h.mean(1))


def mlp(act=nn.GELU):
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), act(), nn.Linear(6, 5), act(), nn.Linear(5, 3))


def cnn():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 3, 3, padding=1, groups=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 3))


def relu_mlp():
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


CASES = {
    "mlp_layernorm": (mlp, (7, 4)),
    "cnn": (cnn, (3, 2, 4, 4)),
    "attention": (Attn, (2, 5, 8)),
}


def make(case, seed=0):
    ctor, shape = CASES[case] if case in CASES else (relu_mlp, (7, 4))
    torch.manual_seed(seed)
    model = ctor().double()
    for p in model.parameters():  # away from the initialisation's zeros (biases, LayerNorm)
        p.data.add_(0.3 * torch.randn_like(p))
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randint(0, 3, (shape[0],))
    return model, (x, y)


def loss_fn(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def flat_problem(model, batch):
    """(theta flat, f(theta flat) = loss, unflatten) for the explicit-Hessian reference."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def unflatten(flat):
        return {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}

    def out(flat):
        with sdpa_kernel([SDPBackend.MATH]):  # the fused kernels have no double backward
            return functional_call(model, {**unflatten(flat), **{k: v.clone() for k, v in buffers.items()}}, (batch[0],))

    def f(flat):
        return F.cross_entropy(out(flat), batch[1])

    return torch.cat([p.flatten() for p in params]), f, out, unflatten


@pytest.mark.parametrize("case", list(CASES))
def test_hvp_equals_explicit_hessian_times_vector(case):
    model, batch = make(case)
    theta, f, _, unflatten = flat_problem(model, batch)
    H = hessian(f, theta)
    v = torch.randn_like(theta)
    got = hvp(model, loss_fn, batch, unflatten(v))
    want = unflatten(H @ v)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_full_scores_equal_theta_times_h_theta(case):
    model, batch = make(case)
    batch2 = (torch.randn_like(batch[0]), torch.randint(0, 3, batch[1].shape))
    want = 0
    for b in (batch, batch2):
        theta, f, _, unflatten = flat_problem(model, b)
        want = want + theta * (hessian(f, theta) @ theta) / 4  # 1/2 theta H theta, mean of 2 batches
    got = parameter_scores(model, loss_fn, [batch, batch2])
    for n, w in unflatten(want).items():
        assert got[n].dtype == torch.float64
        torch.testing.assert_close(got[n], w, rtol=1e-10, atol=1e-10)


def test_first_order_is_the_taylor_change_of_removal():
    model, batch = make("mlp_layernorm")
    theta, f, _, unflatten = flat_problem(model, batch)
    g = torch.autograd.functional.jacobian(f, theta)
    want = unflatten(theta * (hessian(f, theta) @ theta) / 2 - theta * g)
    got = parameter_scores(model, loss_fn, [batch], first_order=True)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["relu_mlp", "cnn"])
def test_oba_curvature_equals_hessian_minus_gauss_newton_on_relu_networks(case):
    model, batch = make(case)
    theta, f, out, unflatten = flat_problem(model, batch)
    H = hessian(f, theta)
    z = out(theta)
    J = jacobian(out, theta).reshape(z.numel(), -1)
    Hz = hessian(lambda zz: F.cross_entropy(zz.reshape(z.shape), batch[1]), z.detach().flatten())
    ggn = J.T @ Hz @ J
    want = unflatten(theta * ((H - ggn) @ theta) / 2)
    got = parameter_scores(model, loss_fn, [batch], curvature="oba")
    assert set(got) == set(want)
    for n in want:  # every layer, the last one included (where H - GGN is zero)
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-10)
    # and the Gauss-Newton product itself
    v = torch.randn_like(theta)
    gv = ggn_vp(model, loss_fn, batch, unflatten(v))
    for n, w in unflatten(ggn @ v).items():
        torch.testing.assert_close(gv[n], w, rtol=1e-10, atol=1e-10)


class LinearisedGELU(nn.Module):
    """GELU's value and slope at the current input with no curvature: g(z0) + g'(z0) (z - z0),
    z0 = z (detached). A network of these has the Hessian H - (GELU curvature terms)."""

    def forward(self, z):
        z0 = z.detach()
        slope = 0.5 * (1 + torch.erf(z0 / 2**0.5)) + z0 * torch.exp(-0.5 * z0 * z0) / (2 * torch.pi) ** 0.5
        return F.gelu(z0) + slope * (z - z0)


def test_oba_curvature_drops_smooth_activation_curvature():
    """On a GELU network "oba" is 1/2 theta * ((H - GGN - A) theta), A the activations' curvature
    terms: the explicit Hessian of the same network with curvature-free GELUs, minus its GGN."""
    model, batch = make("mlp_layernorm")
    linearised, _ = make("mlp_layernorm")
    for i, m in enumerate(linearised):
        if isinstance(m, nn.GELU):
            linearised[i] = LinearisedGELU()
    theta, f, out, unflatten = flat_problem(model, batch)
    _, f_lin, _, _ = flat_problem(linearised, batch)
    z = out(theta)
    J = jacobian(out, theta).reshape(z.numel(), -1)
    Hz = hessian(lambda zz: F.cross_entropy(zz.reshape(z.shape), batch[1]), z.detach().flatten())
    H, H_lin, ggn = hessian(f, theta), hessian(f_lin, theta), J.T @ Hz @ J
    assert (H - H_lin).abs().max() > 1e-3  # the GELUs' curvature is really there
    got = parameter_scores(model, loss_fn, [batch], curvature="oba")
    for n, w in unflatten(theta * ((H_lin - ggn) @ theta) / 2).items():
        torch.testing.assert_close(got[n], w, rtol=1e-10, atol=1e-10)
    full = parameter_scores(model, loss_fn, [batch])
    for n, w in unflatten(theta * (H @ theta) / 2).items():
        torch.testing.assert_close(full[n], w, rtol=1e-10, atol=1e-10)


def test_structure_sums_equal_manual_slices():
    model, batch = make("cnn")
    s = parameter_scores(model, loss_fn, [batch])
    sums = structure_scores(model, s)
    # conv 0's channel includes the BatchNorm (1) applied to it: removing the channel zeroes both
    torch.testing.assert_close(sums["0"]["out"][2],
                               s["0.weight"][2].sum() + s["0.bias"][2] + s["1.weight"][2] + s["1.bias"][2])
    torch.testing.assert_close(sums["4"]["out"][1], s["4.weight"][1].sum() + s["4.bias"][1])  # no norm follows
    torch.testing.assert_close(sums["4"]["in"][1], s["4.weight"][:, 1].sum())
    torch.testing.assert_close(sums["1"]["out"][3], s["1.weight"][3] + s["1.bias"][3])
    torch.testing.assert_close(sums["7"]["in"][5], s["7.weight"][:, 5].sum())
    model, batch = make("attention")
    s = parameter_scores(model, loss_fn, [batch])
    heads = structure_scores(model, s)["mha"]["heads"]
    E, d = 8, 4
    for h in range(2):
        rows = [h * d + i + k * E for k in range(3) for i in range(d)]
        want = (s["mha.in_proj_weight"][rows].sum() + s["mha.in_proj_bias"][rows].sum()
                + s["mha.out_proj.weight"][:, h * d:(h + 1) * d].sum())
        torch.testing.assert_close(heads[h], want)


def test_grouped_conv_input_channel_sums():
    conv = nn.Conv2d(4, 6, 3, groups=2).double()
    s = {"weight": torch.randn(6, 2, 3, 3, dtype=torch.float64)}
    sums = structure_scores(conv, s)[""]
    # input channel 3 = channel 1 of group 1, seen by output channels 3..5
    torch.testing.assert_close(sums["in"][3], s["weight"][3:6, 1].sum())
    torch.testing.assert_close(sums["in"][0], s["weight"][0:3, 0].sum())


def test_unstructured_masks_keep_the_largest_scores():
    s = {"a": torch.tensor([0.1, -5.0, 0.2], dtype=torch.float64), "b": torch.tensor([[3.0, -0.05]], dtype=torch.float64)}
    m = unstructured_masks(s, 0.6)  # 3 of 5 removed: |0.05|, |0.1|, |0.2|
    assert m["a"].tolist() == [False, True, False] and m["b"].tolist() == [[True, False]]
    assert all(v.all() for v in unstructured_masks(s, 0.0).values())
    with pytest.raises(ValueError, match="sparsity"):
        unstructured_masks(s, 1.0)


def test_bad_input_names_the_argument():
    model, batch = make("relu_mlp")
    theta = {n: p.detach() for n, p in model.named_parameters()}
    with pytest.raises(KeyError, match="nope"):
        hvp(model, loss_fn, batch, {"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="vectors\\['0.weight'\\]"):
        hvp(model, loss_fn, batch, {"0.weight": torch.zeros(2, 2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="NaN"):
        hvp(model, loss_fn, batch, {"0.weight": torch.full_like(theta["0.weight"], float("nan"))})
    with pytest.raises(ValueError, match="non-empty"):
        hvp(model, loss_fn, batch, {})
    with pytest.raises(ValueError, match="scalar"):
        hvp(model, lambda m, b: m(b[0]), batch, theta)
    with pytest.raises(ValueError, match="batches"):
        parameter_scores(model, loss_fn, [])
    with pytest.raises(ValueError, match="curvature"):
        parameter_scores(model, loss_fn, [batch], curvature="diag")
    with pytest.raises(ValueError, match="non-finite"):
        parameter_scores(model, lambda m, b: loss_fn(m, b) * float("inf"), [batch])


def test_frozen_parameters_are_scored_and_stay_frozen():
    model, batch = make("relu_mlp")
    for p in model.parameters():
        p.requires_grad_(False)
    s = parameter_scores(model, loss_fn, [batch])
    assert all(not p.requires_grad for p in model.parameters())
    theta, f, _, unflatten = flat_problem(model, batch)
    for n, w in unflatten(theta * (hessian(f, theta) @ theta) / 2).items():  # the same scores as trainable ones
        torch.testing.assert_close(s[n], w, rtol=1e-10, atol=1e-10)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.conv2(h) + x)
        return self.fc(torch.flatten(self.pool(h), 1))


class TorchvisionStyleBlock(nn.Module):
    """In-place ReLU and `out += identity`, as torchvision's ResNet blocks write them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        identity = x
        out = self.bn(self.conv(x))
        out += identity
        out = self.relu(out)
        return self.fc(torch.flatten(out, 1))


class SDPANet(nn.Module):
    """Hand-written heads through F.scaled_dot_product_attention: causal, with a boolean mask."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 3)
        self.register_buffer("keep", torch.tensor([[True, True, False, True, True]] * 5))

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep, scale=0.3)
        c = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out((a + c).transpose(1, 2).flatten(2).mean(1))


class MaskedMHA(nn.Module):
    """nn.MultiheadAttention with a padding mask, a float attention mask, separate k/v widths
    and its (averaged) attention weights used downstream."""

    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
        self.head = nn.Linear(8 + 5, 3)
        pad = torch.zeros(2, 5)
        pad[0, 3] = float("-inf")
        self.register_buffer("pad", pad)
        self.register_buffer("bias", 0.2 * torch.randn(4, 5))

    def forward(self, x):  # x: (B=2, L=4, 8), fed sequence-first; keys/values from slices of it
        x = x.transpose(0, 1)
        out, weights = self.mha(x, x[..., :6].repeat(2, 1, 1)[:5], x[..., :5].repeat(2, 1, 1)[:5],
                                key_padding_mask=self.pad, attn_mask=self.bias)
        return self.head(torch.cat([out.mean(0), weights.sum(1)], -1))


class Constants(nn.Module):
    """Numbers in arithmetic have no tangent (x + 0.5, 2 * x, x - 1)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.b(2.0 * torch.tanh(self.a(x) + 0.5) - 1.0)


FAST_CASES = {
    "constants_in_arithmetic": (Constants, (7, 4)),
    "sdpa_masked_causal": (SDPANet, (2, 5, 8)),
    "mha_masks_kdim_weights": (MaskedMHA, (2, 4, 8)),
    "cnn_train_mode_batchnorm": (cnn, (3, 2, 4, 4)),
    "torchvision_style_block": (TorchvisionStyleBlock, (2, 3, 4, 4)),
    "cnn_eval_bn_maxpool": (cnn, (3, 2, 4, 4)),
    "residual_grouped_conv": (Residual, (2, 3, 4, 4)),
    "mlp_layernorm_gelu": (mlp, (7, 4)),
    "mlp_tanh": (lambda: mlp(nn.Tanh), (7, 4)),
    "mlp_sigmoid": (lambda: mlp(nn.Sigmoid), (7, 4)),
    "mlp_silu": (lambda: mlp(nn.SiLU), (7, 4)),
    "mlp_leaky": (lambda: mlp(nn.LeakyReLU), (7, 4)),
    "attention_layernorm": (Attn, (2, 5, 8)),
    "layernorm_no_affine": (lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6, elementwise_affine=False),
                                                  nn.ReLU(), nn.Linear(6, 3)), (7, 4)),
}


@pytest.mark.parametrize("case", list(FAST_CASES))
@pytest.mark.parametrize("first_order", [False, True])
def test_fast_path_equals_double_backward_and_the_explicit_hessian(case, first_order):
    ctor, shape = FAST_CASES[case]
    torch.manual_seed(0)
    model = ctor().double().train("train_mode" in case)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    for p in model.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    batch = (torch.randn(shape, dtype=torch.float64), torch.randint(0, 3, (shape[0],)))
    fast = parameter_scores(model, loss_fn, [batch], method="fast", first_order=first_order)
    slow = parameter_scores(model, loss_fn, [batch], method="double_backward", first_order=first_order)
    theta, f, _, unflatten = flat_problem(model, batch)
    want = theta * (hessian(f, theta) @ theta) / 2
    if first_order:
        want = want - theta * jacobian(f, theta)
    for n, w in unflatten(want).items():
        torch.testing.assert_close(fast[n], w, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(slow[n], w, rtol=1e-10, atol=1e-10)


def test_fast_path_refuses_what_it_cannot_do_and_auto_falls_back():
    from winnow.hvp_fast import Unsupported

    model, batch = make("relu_mlp")
    model[1] = nn.Hardswish()  # no tangent rule
    with pytest.raises(Unsupported, match="Hardswish"):
        parameter_scores(model, loss_fn, [batch], method="fast")
    auto = parameter_scores(model, loss_fn, [batch])
    slow = parameter_scores(model, loss_fn, [batch], method="double_backward")
    for n in slow:
        torch.testing.assert_close(auto[n], slow[n], rtol=1e-12, atol=1e-12)
    model, batch = make("relu_mlp")
    model[1] = nn.GELU(approximate="tanh")
    with pytest.raises(Unsupported, match="GELU"):
        parameter_scores(model, loss_fn, [batch], method="fast")
    with pytest.raises(ValueError, match="method"):
        parameter_scores(model, loss_fn, [batch], method="forward")


class ScaledSkip(nn.Module):
    """A parameter used directly in forward (get_attr) through a product and a residual add."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.gain = nn.Parameter(torch.ones(4))
        self.register_buffer("shift", torch.full((4,), 0.1))
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x)) * self.gain + x + self.shift)


def test_fast_path_handles_parameters_used_directly_and_buffers():
    torch.manual_seed(0)
    model = ScaledSkip().double()
    batch = (torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,)))
    fast = parameter_scores(model, loss_fn, [batch], method="fast")
    theta, f, _, unflatten = flat_problem(model, batch)
    for n, w in unflatten(theta * (hessian(f, theta) @ theta) / 2).items():
        torch.testing.assert_close(fast[n], w, rtol=1e-10, atol=1e-10)


def test_transposed_conv_and_separate_kv_projection_sums():
    deconv = nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight (in=4, out/groups=3, 3, 3)
    s = {"weight": torch.randn(4, 3, 3, 3, dtype=torch.float64), "bias": torch.randn(6, dtype=torch.float64)}
    sums = structure_scores(deconv, s)[""]
    # output channel 4 = column 1 of group 1, written from input channels 2..3
    torch.testing.assert_close(sums["out"][4], s["weight"][2:4, 1].sum() + s["bias"][4])
    torch.testing.assert_close(sums["in"][1], s["weight"][1].sum())
    assert sums["out"].shape == (6,) and sums["in"].shape == (4,)
    mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
    s = {n: torch.randn(p.shape, dtype=torch.float64) for n, p in mha.named_parameters()}
    heads = structure_scores(mha, s)[""]["heads"]
    for h in range(2):
        rows = slice(4 * h, 4 * h + 4)
        want = sum(s[n][rows].sum() for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight"))
        want = want + s["in_proj_bias"].reshape(3, 8)[:, rows].sum() + s["out_proj.weight"][:, rows].sum()
        torch.testing.assert_close(heads[h], want)
