"""ID3: step-by-step unmasking of individual parameters (ID^3, TACL 2025), as a drop-in optimizer."""
import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from winnow import ops
from winnow.dtypes import stat_dtype
from winnow.optim.masked_adamw import MaskedAdamW


def _named(params) -> list[tuple[str, Tensor]]:
    if isinstance(params, nn.Module):
        return [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    if isinstance(params, Tensor):
        raise TypeError("params must be a model, an iterable of parameters or of (name, parameter) pairs")
    items = list(params)
    if not items:
        raise ValueError("params is an empty list")
    if all(isinstance(x, tuple) and len(x) == 2 for x in items):
        return [(str(n), p) for n, p in items]
    return [(f"params.{i}", p) for i, p in enumerate(items)]


def fingerprint(named: Iterable[tuple[str, Tensor]]) -> str:
    """A hash of the base weights' names, shapes, dtypes and a strided sample of their values."""
    h = hashlib.sha256()
    for name, p in named:
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to(torch.float64).cpu()
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


class ID3(MaskedAdamW):
    """Each step scores the still-masked parameters, H = |g| / (|theta| + eps)^exponent (the fused
    importance kernel), unmasks the global top-u_t of them (u_t = budget // total_steps, plus one
    for the first budget % total_steps steps), then takes an AdamW step on the unmasked set only.

    Masks only grow and end with exactly `budget` unmasked units; masked weights are never read
    for the update nor decayed. `block_size` > 1 unmasks blocks of that many consecutive elements
    (scored by the sum of their H) and counts the budget in blocks. Optimizer state is compact:
    proportional to the unmasked count, with each unit's own bias correction (the authors'
    toolkit keeps dense Adam state with one global step count).

    `params`: a model, (name, parameter) pairs, or parameters (named params.<i>). The Adam epsilon
    is `adam_eps`; `eps` and `exponent` are ID3's (`exp=`, the authors' toolkit's name, is
    accepted for `exponent`).
    """

    def __init__(self, params, budget: int, total_steps: int, eps: float = 1e-8, exponent: float = 1.0,
                 block_size: int = 1, lr: float = 1e-3, betas=(0.9, 0.999), adam_eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False, *,
                 exp: float | None = None):
        if exp is not None:
            if exponent != 1.0 and exponent != exp:
                raise ValueError(f"exp is an alias of exponent: give one of them (got exponent={exponent}, exp={exp})")
            exponent = exp
        named = _named(params)
        if len({p.device for _, p in named}) != 1:
            raise ValueError("ID3 selects one global top-u: all parameters must be on one device")
        if not (isinstance(block_size, int) and not isinstance(block_size, bool) and block_size >= 1):
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        units = sum((p.numel() + block_size - 1) // block_size for _, p in named)
        if not (isinstance(budget, int) and 0 < budget <= units):
            raise ValueError(f"budget must be an int in [1, {units}] (units of {block_size} parameter(s)), got {budget!r}")
        if not (isinstance(total_steps, int) and total_steps > 0):
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if not (eps >= 0):
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        super().__init__([p for _, p in named], lr=lr, betas=betas, eps=adam_eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, block_size=block_size, state_policy="drop")
        self.names = [n for n, _ in named]
        self.budget, self.total_steps = budget, total_steps
        self.id3_eps, self.id3_exponent = float(eps), float(exponent)
        self.id3_block_size = block_size
        self.id3_step = 0
        self.base_fingerprint = fingerprint(named)
        self._params = [p for _, p in named]
        for p in self._params:
            self.set_mask(p, torch.zeros(0, dtype=torch.int64, device=p.device))  # nothing trains yet
        # Workspace (not optimizer state): a unit mask and a score buffer per parameter.
        self._unmasked = [torch.zeros(self.num_blocks(p), dtype=torch.bool, device=p.device) for p in self._params]
        self._scores = [torch.zeros(p.shape, dtype=stat_dtype(p.dtype),
                                    device=p.device) for p in self._params]
        self._nonfinite = torch.zeros(len(self._params), dtype=torch.int64, device=self._params[0].device)
        self._initial = [[] for _ in self._params]  # (unit indices, their values before training) per step
        self._units = [self.num_blocks(p) for p in self._params]
        self._count = [0] * len(self._params)  # unmasked units per parameter, kept on the host

    def unmask_count_at(self, step: int) -> int:
        base, extra = divmod(self.budget, self.total_steps)
        return base + (1 if step < extra else 0)

    def unmasked_count(self) -> int:
        return sum(self._count)

    def masks(self) -> dict[Tensor, Tensor]:
        """{parameter: bool tensor of its shape, True where unmasked}."""
        out = {}
        for p, m in zip(self._params, self._unmasked):
            if self.id3_block_size == 1:
                out[p] = m.view(p.shape).clone()
            else:
                out[p] = m.repeat_interleave(self.id3_block_size)[: p.numel()].view(p.shape)
        return out

    def workspace_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._unmasked + self._scores)

    @torch.no_grad()
    def _select(self) -> list[Tensor]:
        """Score the masked units and return the newly unmasked unit indices of each parameter."""
        none = [torch.zeros(0, dtype=torch.int64) for _ in self._params]
        idx = [i for i, p in enumerate(self._params) if p.grad is not None]
        if not idx:
            return none
        bs = self.id3_block_size
        device = self._params[0].device
        cnt = torch.zeros(len(idx), dtype=torch.int64, device=device)
        ops.importance_update_id3(
            [self._params[i].detach() for i in idx], [self._params[i].grad for i in idx],
            [self._scores[i] for i in idx],
            [self._unmasked[i].view(self._params[i].shape) for i in idx] if bs == 1 else None,
            eps=self.id3_eps, exponent=self.id3_exponent, beta=0.0, nonfinite=cnt,
        )
        self._nonfinite[torch.tensor(idx, device=device)] += cnt
        if bs == 1:
            unit_scores = [self._scores[i].view(-1) for i in idx]
        else:  # a block's score is the sum of its elements' H (the partial last block padded with 0)
            unit_scores = []
            for i in idx:
                s = self._scores[i].view(-1)
                pad = self.num_blocks(self._params[i]) * bs - s.numel()
                unit_scores.append(torch.nn.functional.pad(s, (0, pad)).view(-1, bs).sum(1))
        masked = sum(self._units[i] - self._count[i] for i in idx)  # host-side counts: no sync
        k = min(self.unmask_count_at(self.id3_step), masked)
        out = none
        for i, c in zip(idx, ops.masked_topk(unit_scores, [self._unmasked[i] for i in idx], k)):
            out[i] = c
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.id3_step >= self.total_steps:
            raise ValueError(f"ID3 was built for total_steps={self.total_steps} steps; step {self.id3_step + 1} is beyond it")
        for i, (p, new) in enumerate(zip(self._params, self._select())):
            if new.numel() == 0:
                continue
            new = new.to(p.device)
            bs = self.id3_block_size
            elems = (new[:, None] * bs + torch.arange(bs, device=p.device)).view(-1)
            elems = elems[elems < p.numel()]
            # kept on the device: a .cpu() here would sync every step; save_sparse moves them once
            self._initial[i].append((elems, p.detach().view(-1)[elems].clone()))
            self._unmasked[i][new] = True
            self._count[i] += new.numel()
            self._append_fresh(p, new)  # masked units never trained: fresh state, appended
        super().step()
        self.id3_step += 1
        return loss

    # ---- checkpoints and export ----

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["id3"] = {
            "step": self.id3_step, "budget": self.budget, "total_steps": self.total_steps,
            "block_size": self.id3_block_size, "unmasked": [m.clone() for m in self._unmasked],
            "initial": [[(a.clone(), b.clone()) for a, b in lst] for lst in self._initial],
            "fingerprint": self.base_fingerprint,
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        extra = state_dict.get("id3")
        if extra is None:
            raise ValueError("state_dict has no 'id3' section (not saved by winnow.ID3)")
        for key in ("budget", "total_steps", "block_size"):
            mine = {"budget": self.budget, "total_steps": self.total_steps, "block_size": self.id3_block_size}[key]
            if extra[key] != mine:
                raise ValueError(f"state_dict was saved with {key}={extra[key]}, this ID3 has {mine}")
        if len(extra["unmasked"]) != len(self._params) or any(
                a.shape != b.shape for a, b in zip(extra["unmasked"], self._unmasked)):
            raise ValueError("state_dict's masks do not match these parameters")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "id3"})
        for mine, theirs in zip(self._unmasked, extra["unmasked"]):
            mine.copy_(theirs)
        self._count = [int(m.sum()) for m in self._unmasked]
        self._initial = [[(a.clone(), b.clone()) for a, b in lst] for lst in extra["initial"]]
        self.id3_step = int(extra["step"])

    @torch.no_grad()
    def save_sparse(self, path: str, absolute: bool = False) -> None:
        """safetensors: per parameter name, `<name>.indices` (flat int64) and `<name>.delta`
        (value - initial value), plus `<name>.values` with absolute=True; the base model's
        fingerprint is in the metadata."""
        from safetensors.torch import save_file

        tensors = {}
        for name, p, lst in zip(self.names, self._params, self._initial):
            if not lst:
                continue
            idx = torch.cat([a for a, _ in lst])
            init = torch.cat([b for _, b in lst]).cpu()
            current = p.detach().view(-1)[idx].cpu()
            idx = idx.cpu()
            tensors[f"{name}.indices"] = idx.contiguous()
            tensors[f"{name}.delta"] = (current.to(torch.float32) - init.to(torch.float32)).contiguous() \
                if p.dtype != torch.float64 else (current - init).contiguous()
            if absolute:
                tensors[f"{name}.values"] = current.contiguous()
        save_file(tensors, path, metadata={"format": "winnow-id3-sparse", "fingerprint": self.base_fingerprint,
                                           "budget": str(self.budget), "block_size": str(self.id3_block_size)})


@torch.no_grad()
def apply_sparse(model: nn.Module, path: str, check_fingerprint: bool = True) -> int:
    """Add the deltas of a save_sparse file to `model`'s parameters (by name); returns how many
    entries changed. Refuses a base model whose fingerprint differs from the one trained on."""
    from safetensors import safe_open

    named = [(n, p) for n, p in model.named_parameters()]
    by_name = dict(named)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "winnow-id3-sparse":
            raise ValueError(f"{path} is not a winnow ID3 sparse file")
        names = sorted({k.rsplit(".", 1)[0] for k in f.keys()})
        if check_fingerprint:
            trained = [(n, p) for n, p in named if p.requires_grad]
            if fingerprint(trained) != meta.get("fingerprint"):
                raise ValueError("the model's weights do not match the base model the sparse delta was trained on "
                                 "(fingerprint differs); pass check_fingerprint=False to apply anyway")
        changed = 0
        for name in names:
            if name not in by_name:
                raise ValueError(f"{path} has a delta for parameter {name!r}, which the model does not have")
            p = by_name[name]
            idx = f.get_tensor(f"{name}.indices").to(p.device)
            delta = f.get_tensor(f"{name}.delta").to(p.device)
            flat = p.data.view(-1)
            flat[idx] = (flat[idx].to(delta.dtype) + delta).to(p.dtype)
            changed += idx.numel()
    return changed
