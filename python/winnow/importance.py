"""ImportanceTracker: running parameter importance for AdaLoRA and ID3, on the fused kernel."""
from collections.abc import Iterable

import torch
from torch import Tensor

from winnow import ops
from winnow.dtypes import stat_dtype
from winnow.optim import shards

MODES = ("adalora", "id3")


def _check_beta(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


class ImportanceTracker:
    """Keeps importance statistics of `params` and updates them from their `.grad` in one fused
    call per device.

    mode="adalora" (peft's RankAllocator.update_ipt): sensitivity I = |p * grad| smoothed as
    exp_avg_ipt with beta1, uncertainty |I - exp_avg_ipt| smoothed as exp_avg_unc with beta2;
    scores() = exp_avg_ipt * exp_avg_unc.
    mode="id3": H = |grad| / (|p| + eps) ** exponent, optionally smoothed with beta (0 = none,
    the paper); entries marked unmasked in update() are left alone.

    Statistics are float32 (float64 for float64 params). Elements with a non-finite importance
    are skipped, never accumulated; `nonfinite_count` says how many were skipped so far.
    Parameters whose grad is None are skipped in that update, like torch.optim does.
    FSDP2 (DTensor parameters): the statistics are those of each rank's local shard, and
    state_dict() gives them as DTensors placed like the parameters (DCP saves every rank's part).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        mode: str = "adalora",
        beta1: float = 0.85,
        beta2: float = 0.85,
        eps: float = 1e-8,
        exponent: float = 1.0,
        beta: float = 0.0,
    ):
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors, got a single tensor")
        self.params = list(params)
        if not self.params:
            raise ValueError("params is an empty list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{i}] must be a tensor, got {type(p).__name__}")
            if not p.is_floating_point():
                raise TypeError(f"params[{i}] must be a floating-point tensor, got {p.dtype}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.beta1 = _check_beta("beta1", beta1)
        self.beta2 = _check_beta("beta2", beta2)
        self.beta = _check_beta("beta", beta)
        if not (isinstance(eps, (int, float)) and eps >= 0 and eps == eps and eps != float("inf")):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)
        self.exponent = float(exponent)
        self.step = 0
        stat = lambda p: torch.zeros(  # noqa: E731
            shards.local(p).shape, dtype=stat_dtype(p.dtype), device=p.device
        )
        if mode == "adalora":
            self.exp_avg_ipt = [stat(p) for p in self.params]
            self.exp_avg_unc = [stat(p) for p in self.params]
        else:
            self.id3_scores = [stat(p) for p in self.params]
        # One group per device: the kernels take one device per call.
        self._groups: dict[torch.device, list[int]] = {}
        for i, p in enumerate(self.params):
            self._groups.setdefault(p.device, []).append(i)
        self._nonfinite = {d: torch.zeros(len(idx), dtype=torch.int64, device=d) for d, idx in self._groups.items()}

    @torch.no_grad()
    def update(self, unmasked: list[Tensor] | None = None) -> None:
        """Fold the current gradients into the statistics (call after backward, before zero_grad)."""
        if unmasked is not None:
            if self.mode != "id3":
                raise ValueError("unmasked is only used in mode='id3'")
            if len(unmasked) != len(self.params):
                raise ValueError(f"unmasked has {len(unmasked)} tensors but there are {len(self.params)} params")
        for device, idx in self._groups.items():
            live = [k for k, i in enumerate(idx) if self.params[i].grad is not None]
            if not live:
                continue
            for k in live:
                if self.params[idx[k]].grad.is_sparse:
                    raise TypeError(f"params[{idx[k]}].grad is sparse; sparse gradients are not supported")
            sel = [idx[k] for k in live]
            counter = self._nonfinite[device] if len(live) == len(idx) else torch.zeros_like(self._nonfinite[device][: len(live)])
            p = [shards.local(self.params[i].detach()) for i in sel]
            g = [shards.local(self.params[i].grad) for i in sel]
            if self.mode == "adalora":
                ops.importance_update_adalora(
                    p, g, [self.exp_avg_ipt[i] for i in sel], [self.exp_avg_unc[i] for i in sel],
                    self.beta1, self.beta2, counter,
                )
            else:
                ops.importance_update_id3(
                    p, g, [self.id3_scores[i] for i in sel], None if unmasked is None else [unmasked[i] for i in sel],
                    eps=self.eps, exponent=self.exponent, beta=self.beta, nonfinite=counter,
                )
            if len(live) != len(idx):
                self._nonfinite[device][torch.tensor(live, device=device)] += counter
        self.step += 1

    def scores(self, mean_dims: list[int | None] | None = None) -> list[Tensor]:
        """Importance scores, one tensor per param (or its mean over mean_dims[i], AdaLoRA mode).

        AdaLoRA: exp_avg_ipt * exp_avg_unc (new tensors). ID3: the score tensors themselves.
        """
        if self.mode == "id3":
            if mean_dims is not None:
                raise ValueError("mean_dims is only supported in mode='adalora'")
            return list(self.id3_scores)
        dims = [None] * len(self.params) if mean_dims is None else list(mean_dims)
        if len(dims) != len(self.params):
            raise ValueError(f"mean_dims has {len(dims)} entries but there are {len(self.params)} params")
        out: list[Tensor | None] = [None] * len(self.params)
        for idx in self._groups.values():
            res = ops.importance_score(
                [self.exp_avg_ipt[i] for i in idx], [self.exp_avg_unc[i] for i in idx], [dims[i] for i in idx]
            )
            for i, s in zip(idx, res):
                out[i] = s
        return out

    @property
    def nonfinite_count(self) -> int:
        """Elements skipped so far because their importance was not finite (syncs with the device)."""
        return int(sum(int(c.sum()) for c in self._nonfinite.values()))

    def _stats(self) -> dict[str, list[Tensor]]:
        if self.mode == "adalora":
            return {"exp_avg_ipt": self.exp_avg_ipt, "exp_avg_unc": self.exp_avg_unc}
        return {"scores": self.id3_scores}

    def state_dict(self) -> dict:
        sd = {
            "mode": self.mode,
            "step": self.step,
            "hyperparameters": {
                "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "exponent": self.exponent, "beta": self.beta,
            },
            "nonfinite": [0] * len(self.params),
        }
        for d, idx in self._groups.items():
            for i, c in zip(idx, self._nonfinite[d].tolist()):
                sd["nonfinite"][i] = c
        for name, tensors in self._stats().items():
            sd[name] = [shards.as_dtensor(t.reshape(-1).clone(), p) if shards.is_sharded(p) else t.clone()
                        for t, p in zip(tensors, self.params)]
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("mode") != self.mode:
            raise ValueError(f"state_dict is for mode {state_dict.get('mode')!r}, this tracker is {self.mode!r}")
        stats = self._stats()
        for name, tensors in stats.items():
            loaded = state_dict.get(name)
            if loaded is None or len(loaded) != len(tensors):
                raise ValueError(
                    f"state_dict[{name!r}] must hold {len(tensors)} tensors, got "
                    f"{'none' if loaded is None else len(loaded)}"
                )
            loaded = [shards.local(t) for t in loaded]
            state_dict = {**state_dict, name: loaded}
            for i, (mine, theirs) in enumerate(zip(tensors, loaded)):
                if tuple(theirs.shape) != tuple(mine.shape):
                    raise ValueError(
                        f"state_dict[{name!r}][{i}] has shape {tuple(theirs.shape)}, expected {tuple(mine.shape)}"
                    )
        if len(state_dict.get("nonfinite", ())) != len(self.params):
            raise ValueError(f"state_dict['nonfinite'] must have {len(self.params)} entries")
        for name, tensors in stats.items():
            for mine, theirs in zip(tensors, state_dict[name]):
                mine.copy_(theirs)
        for d, idx in self._groups.items():
            self._nonfinite[d].copy_(torch.tensor([state_dict["nonfinite"][i] for i in idx], dtype=torch.int64))
        self.step = int(state_dict["step"])
        hp = state_dict.get("hyperparameters", {})
        for k in ("beta1", "beta2", "eps", "exponent", "beta"):
            if k in hp:
                setattr(self, k, float(hp[k]))
