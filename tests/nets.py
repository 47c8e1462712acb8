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
