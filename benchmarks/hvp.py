"""OBA scoring cost: one full-curvature scoring pass (H theta and theta * H theta in float64) and
the bare Hessian-vector products, as multiples of one gradient (forward + backward), on VGG19-,
ResNet32- and ViT-style CIFAR-size models (32 x 32 inputs, 10 classes), BatchNorm in eval mode.
The ViT exercises the attention path (winnow's softmax_tangent kernel), LayerNorm and GELU.

Contenders, timed side by side: winnow.oba.parameter_scores on the fast path (winnow.hvp_fast:
reverse over a forward tangent) and on double backward (each with the float64 epilogue),
winnow.hvp.hvp (double backward alone) and torch.func forward-over-reverse (jvp of grad).
"""
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import harness

VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def vgg19(num_classes: int = 10) -> nn.Module:
    layers, c = [], 3
    for w in VGG19:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, num_classes))


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet32(num_classes: int = 10) -> nn.Module:
    blocks, c = [], 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(5):
            blocks.append(_Basic(c, width, stride if i == 0 else 1))
            c = width
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


class _Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual add."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """ViT-Tiny-style: 4 x 4 patches (64 tokens), width 192, 3 heads, 4 blocks, mean pooling."""

    def __init__(self, num_classes: int = 10, dim: int = 192, depth: int = 4, heads: int = 3):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 64, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def run(device: torch.device, batch_size: int = 64, rounds: int = 3) -> dict:
    from torch.func import functional_call, grad, jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from winnow.hvp import hvp
    from winnow.oba import parameter_scores

    rows = []
    for name, ctor in (("VGG19", vgg19), ("ResNet32", resnet32), ("ViT", ViT)):
        torch.manual_seed(0)
        model = ctor().to(device).eval()
        batch = (torch.randn(batch_size, 3, 32, 32, device=device), torch.randint(0, 10, (batch_size,), device=device))
        params = list(model.parameters())
        theta = {n: p.detach() for n, p in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def gradient():
            return torch.autograd.grad(loss_fn(model, batch), params)

        def loss_of(ps):
            return loss_fn(lambda x: functional_call(model, {**ps, **buffers}, (x,)), batch)

        def fwd_over_rev():
            with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no forward AD
                return jvp(grad(loss_of), (theta,), (theta,))

        samples = harness.time_interleaved({
            "gradient": gradient,
            "scores fast": lambda: parameter_scores(model, loss_fn, [batch], method="fast"),
            "scores double-backward": lambda: parameter_scores(model, loss_fn, [batch], method="double_backward"),
            "hvp": lambda: hvp(model, loss_fn, batch, theta),
            "fwd-over-rev": fwd_over_rev,
        }, device, warmup=1, rounds=rounds)
        g = samples["gradient"]
        rows.append({
            "model": name, "params": sum(p.numel() for p in params),
            "gradient ms": harness.median(g) * 1e3,
            "fast scores / grad": 1 / harness.paired_speedup(g, samples["scores fast"]),
            "double-backward scores / grad": 1 / harness.paired_speedup(g, samples["scores double-backward"]),
            "hvp / grad": 1 / harness.paired_speedup(g, samples["hvp"]),
            "fwd-over-rev / grad": 1 / harness.paired_speedup(g, samples["fwd-over-rev"]),
        })
    header = (f"OBA scoring pass vs one gradient, batch {batch_size} x 3 x 32 x 32, on {harness.device_name(device)}; "
              f"median of {rounds} paired rounds")
    cols = ["model", "params", "gradient ms", "fast scores / grad", "double-backward scores / grad", "hvp / grad",
            "fwd-over-rev / grad"]
    return {"header": header, "table": harness.format_table(rows, cols), "rows": rows}
