"""SVD adapter layers: W x + B (A * E) x * scaling / (ranknum + 1e-5), P = B, lambda = E, Q = A.

Parameter names and the forward formula are peft's (AdaLoraLayer / SVDLinear), so that state
dicts move between winnow and peft unchanged.
"""

import torch
from torch import nn


def orthogonality_terms(a: torch.Tensor, b: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """||A A^T - I|| and ||B^T B - I|| (Frobenius; "paper": squared), for the non-empty ones."""
    terms = []
    for mat, left in ((a, True), (b, False)):
        if mat.numel() == 0:
            continue
        cov = mat @ mat.T if left else mat.T @ mat
        diff = cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        terms.append(torch.linalg.matrix_norm(diff) if kind == "peft" else diff.pow(2).sum())
    return terms


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # transformers.pytorch_utils.Conv1D


def adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


class SVDLinear(nn.Module):
    """Wraps an nn.Linear (or transformers' Conv1D, whose weight is stored transposed)."""

    def __init__(self, base_layer: nn.Module, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                 adapter_name: str = "default"):
        super().__init__()
        if not adaptable(base_layer):
            raise TypeError(f"SVD adapters wrap nn.Linear or transformers' Conv1D, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.fan_in_fan_out = _is_conv1d(base_layer)
        w = base_layer.weight
        self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.fan_in_fan_out else (w.shape[1], w.shape[0])
        self.adapter_name = adapter_name
        kw = dict(device=w.device, dtype=w.dtype if w.is_floating_point() else torch.float32)
        self.lora_A = nn.ParameterDict({adapter_name: nn.Parameter(torch.zeros(r, self.in_features, **kw))})
        self.lora_E = nn.ParameterDict({adapter_name: nn.Parameter(torch.zeros(r, 1, **kw))})
        self.lora_B = nn.ParameterDict({adapter_name: nn.Parameter(torch.zeros(self.out_features, r, **kw))})
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        # scale = alpha / init_r, fixed at injection and unchanged by pruning (peft: ranknum = r)
        self.scaling = float(lora_alpha) if lora_alpha > 0 else float(r)
        self.ranknum = float(r)
        self.merged = False
        # FSDP2: the orthogonality terms are taken in forward, where the adapters are whole
        # (AdaLoRA sets the mode when the parameters are sharded; None: not recorded)
        self.record_orth: str | None = None
        self.orth_terms: list[torch.Tensor] = []
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """E = 0, A and B ~ N(0, 0.02) (peft's AdaLoRA initialisation)."""
        nn.init.zeros_(self.lora_E[self.adapter_name])
        nn.init.normal_(self.lora_A[self.adapter_name], mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B[self.adapter_name], mean=0.0, std=0.02)

    @property
    def weight(self) -> torch.Tensor:  # for code that inspects module.weight
        return self.base_layer.weight

    def delta_weight(self) -> torch.Tensor:
        a, e, b = (d[self.adapter_name] for d in (self.lora_A, self.lora_E, self.lora_B))
        delta = b @ (a * e) * self.scaling / (self.ranknum + 1e-5)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight.add_(self.delta_weight().to(self.base_layer.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.sub_(self.delta_weight().to(self.base_layer.weight.dtype))
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged or self.lora_A[self.adapter_name].shape[0] == 0:
            return result
        a, e, b = (d[self.adapter_name] for d in (self.lora_A, self.lora_E, self.lora_B))
        if self.record_orth is not None and torch.is_grad_enabled():
            self.orth_terms = orthogonality_terms(a, b, self.record_orth)
        h = self.lora_dropout(x.to(a.dtype)) @ (a * e).T @ b.T
        return result + (h * self.scaling / (self.ranknum + 1e-5)).to(result.dtype)

    @torch.no_grad()
    def resize(self, r: int) -> None:
        """Make room for r triplets (loading a pruned adapter): new zero-sized or resized tensors."""
        for d, shape in ((self.lora_A, (r, self.in_features)), (self.lora_E, (r, 1)), (self.lora_B, (self.out_features, r))):
            old = d[self.adapter_name]
            d[self.adapter_name] = nn.Parameter(torch.zeros(shape, device=old.device, dtype=old.dtype),
                                                requires_grad=old.requires_grad)

    def extra_repr(self) -> str:
        r = self.lora_A[self.adapter_name].shape[0]
        return f"in={self.in_features}, out={self.out_features}, r={r}, scaling={self.scaling:g}/{self.ranknum:g}"


