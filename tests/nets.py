"""Tiny models shared by the tests."""
import torch


class QKVNet(torch.nn.Module):
    """Three linear maps named like attention projections (peft target names q, k, v)."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(16, 24)
        self.k = torch.nn.Linear(16, 24)
        self.v = torch.nn.Linear(24, 8)

    def forward(self, x):
        return self.v(torch.tanh(self.q(x) * self.k(x)))


def tiny_cnn(num_classes: int = 10) -> torch.nn.Module:
    """A torchvision-style constructor (num_classes=...) for the CLI's --model module:callable."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


class _Twice(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.mix = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        return self.head(torch.tanh(self.mix(torch.tanh(self.mix(h)))))


def shared_layer_cnn(num_classes: int = 10) -> torch.nn.Module:
    """A layer applied twice per forward: what curvature='fisher' refuses."""
    return _Twice(num_classes)
