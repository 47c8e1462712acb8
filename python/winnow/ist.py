"""IST: layer-wise importance-aware sparse tuning (the authors' released algorithm).

Every optimizer step a subset of the model's layers trains: L * update_ratio layers drawn without
replacement with probabilities proportional to sigmoid(-s). Every score_interval steps,
n_rollouts probes suppress a random half of the layers' adapters (scaled by suppression_factor),
measure reward exp(-loss) and move the scores: s_i += score_lr * sum_k A_k 1[i in S_k] p_i (1 - p_i),
A_k = R_k - mean(R), p = sigmoid(s) taken before the probes.
"""
import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from winnow.modes import evaluating
from winnow.optim.masked_adamw import STATE_POLICIES

LAYER_PATHS = ("model.layers", "model.model.layers", "transformer.h", "encoder.layer", "bert.encoder.layer",
               "model.decoder.layers", "layers")


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """The model's block list: an explicit dotted path, or the first known one found (also inside
    peft wrappers, whose base model sits under base_model.model)."""
    roots = [model]
    for attr in ("base_model", "model"):
        nxt = getattr(roots[-1], attr, None)
        if isinstance(nxt, nn.Module):
            roots.append(nxt)
    if getattr(model, "base_model", None) is not None and isinstance(getattr(model.base_model, "model", None), nn.Module):
        roots.append(model.base_model.model)
    paths = [layers_path] if layers_path else LAYER_PATHS
    for root in roots:
        for path in paths:
            layers = _get(root, path)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
    raise ValueError(f"no layer list found at {paths}; pass layers_path='dotted.path.to.ModuleList'")


class _Scaling:
    """The adapter scalings of one layer (peft LoRA/DoRA: a dict per adapter name; winnow SVD
    adapters: a float), with exact save / scale / restore."""

    def __init__(self, layer: nn.Module):
        self.items = []  # (module, adapter name or None)
        for m in layer.modules():
            sc = getattr(m, "scaling", None)
            if isinstance(sc, dict) and hasattr(m, "lora_A"):
                self.items += [(m, name) for name in sc]
            elif isinstance(sc, float) and hasattr(m, "lora_A"):
                self.items.append((m, None))

    def get(self):
        return [m.scaling[n] if n is not None else m.scaling for m, n in self.items]

    def set(self, values):
        for (m, n), v in zip(self.items, values):
            if n is None:
                m.scaling = v
            else:
                m.scaling[n] = v


class ISTController:
    """Pure PyTorch; no Trainer needed. Call `begin_step(step, probe=...)` once per optimizer step,
    before that step's forward passes (so layers switch only at gradient-accumulation boundaries);
    `active_layers` then lists the layers that train. `probe()` returns a held-out loss (a float or
    a 0-dim tensor); it runs in eval mode without gradients.

    Inactive layers' trainable parameters get requires_grad=False (so no gradient, no update, no
    weight decay, no state growth). With a winnow MaskedAdamW passed as `optimizer`, the state of
    inactive parameters follows `state_policy` (keep | drop | offload).

    Under torch.distributed every draw is made on rank 0 and broadcast, and each probe's loss is
    averaged over ranks (each rank probes its shard), so active sets and scores are identical on
    all ranks. With DDP, build it with find_unused_parameters=True: the resting layers' adapters
    take no part in backward. Under FSDP2 (fully_shard) the switching works whatever the units:
    FSDP2 reads requires_grad at every step, per parameter (tested with one unit per layer, the
    adapters sharing it with the frozen weights); the generator starts as rank 0's on every rank,
    so the state_dict is the same everywhere (what torch.distributed.checkpoint assumes of
    plain tensors).
    """

    def __init__(self, model: nn.Module, update_ratio: float = 0.25, suppress_ratio: float = 0.5,
                 suppression_factor: float = 0.25, n_rollouts: int = 3, score_lr: float = 10.0,
                 score_interval: int = 10, layers_path: str | None = None, state_policy: str = "keep",
                 seed: int = 0, optimizer=None):
        if not 0 < update_ratio <= 1:
            raise ValueError(f"update_ratio must be in (0, 1], got {update_ratio}")
        if not 0 < suppress_ratio <= 1:
            raise ValueError(f"suppress_ratio must be in (0, 1], got {suppress_ratio}")
        if suppression_factor < 0:
            raise ValueError(f"suppression_factor must be >= 0, got {suppression_factor}")
        if n_rollouts < 1 or score_interval < 1:
            raise ValueError("n_rollouts and score_interval must be >= 1")
        if state_policy not in STATE_POLICIES:
            raise ValueError(f"state_policy must be one of {STATE_POLICIES}, got {state_policy!r}")
        self.model = model
        self.layers = find_layers(model, layers_path)
        L = len(self.layers)
        self.n_active = max(1, int(L * update_ratio))
        self.n_suppress = max(1, int(L * suppress_ratio))
        self.suppression_factor = float(suppression_factor)
        self.n_rollouts, self.score_lr, self.score_interval = n_rollouts, float(score_lr), score_interval
        self.state_policy = state_policy
        self.optimizer = optimizer
        self.scores = torch.zeros(L, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        if self._distributed():  # every rank follows rank 0's generator: any rank's checkpoint restores the draws
            self.generator.set_state(self._from_rank0(self.generator.get_state()))
        # The parameters IST switches: those trainable when the controller is built.
        self.layer_params = [[p for p in layer.parameters() if p.requires_grad] for layer in self.layers]
        if not any(self.layer_params):
            raise ValueError("no trainable parameters inside the layers: nothing for IST to switch")
        self.scalings = [_Scaling(layer) for layer in self.layers]
        self.active_layers: list[int] = list(range(L))
        self.history: list[dict] = []
        if optimizer is not None:
            self.check_optimizer(optimizer)

    def check_optimizer(self, optimizer, who: str = "the optimizer") -> None:
        """Raises unless `optimizer` holds every parameter IST switches (an optimizer built after
        the layers were frozen would silently never train them)."""
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = sum(1 for ps in self.layer_params for p in ps if id(p) not in held)
        if missing:
            raise ValueError(f"{who} does not hold {missing} of the layers' trainable parameters that IST switches")

    # ---- sampling ----

    def _distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def sample_layers(self) -> list[int]:
        """int(L * update_ratio) layers, without replacement, with weights sigmoid(-s); drawn on
        rank 0 and broadcast, so every rank trains the same layers."""
        pick = torch.multinomial(torch.sigmoid(-self.scores), self.n_active, replacement=False,
                                 generator=self.generator)
        return sorted(self._from_rank0(pick).tolist())

    def _mean_over_ranks(self, loss: float) -> float:
        """Each rank probes its own shard of the probe data; the reward uses the mean loss, so the
        scores stay identical on every rank (and equal one process probing the whole batch)."""
        if not self._distributed():
            return loss
        t = torch.tensor([loss], dtype=torch.float64, device=self._collective_device())
        torch.distributed.all_reduce(t)
        return float(t) / torch.distributed.get_world_size()

    @staticmethod
    def _collective_device() -> torch.device:
        nccl = torch.distributed.get_backend() == "nccl"
        return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def _from_rank0(self, t: torch.Tensor) -> torch.Tensor:
        if not self._distributed():
            return t
        t = t.to(self._collective_device())
        torch.distributed.broadcast(t, src=0)
        return t.cpu()

    def begin_step(self, step: int, probe: Callable[[], object] | None = None) -> list[int]:
        if probe is not None and step > 0 and step % self.score_interval == 0:
            self.update_scores(probe)
        active = self.sample_layers()
        self._switch(active)
        self.history.append({"step": step, "active": active})
        return active

    def _switch(self, active: list[int]) -> None:
        on = set(active)
        for i, params in enumerate(self.layer_params):
            for p in params:
                p.requires_grad_(i in on)
                if i not in on:
                    p.grad = None
            if self.optimizer is not None and hasattr(self.optimizer, "deactivate") and self.state_policy != "keep":
                for p in params:
                    if i in on:
                        self.optimizer.activate(p)
                    else:
                        self.optimizer.deactivate(p)
        self.active_layers = sorted(on)

    # ---- probes ----

    @contextlib.contextmanager
    def suppress(self, layers: list[int], factor: float):
        """Context: the adapters of `layers` scaled by `factor`, restored exactly on exit (also on
        an exception); the body runs without autograd (a probe is an evaluation forward)."""
        saved = [self.scalings[i].get() for i in layers]
        try:
            for i, vals in zip(layers, saved):
                self.scalings[i].set([v * factor for v in vals])
            with torch.no_grad():
                yield
        finally:
            for i, vals in zip(layers, saved):
                self.scalings[i].set(vals)

    @torch.no_grad()
    def update_scores(self, probe: Callable[[], object]) -> None:
        if not any(s.items for s in self.scalings):
            return  # full-parameter layers have no adapter to suppress: scores stay, sampling stays uniform
        p = torch.sigmoid(self.scores)
        rewards, sets = [], []
        with evaluating(self.model):  # every module's own mode comes back afterwards
            for _ in range(self.n_rollouts):
                chosen = torch.multinomial(p, self.n_suppress, replacement=False, generator=self.generator)
                chosen = self._from_rank0(chosen)
                with self.suppress(chosen.tolist(), self.suppression_factor):
                    loss = self._mean_over_ranks(float(probe()))
                rewards.append(math.exp(-loss))
                sets.append(chosen)
        r = torch.tensor(rewards, dtype=torch.float64)
        adv = r - r.mean()
        delta = torch.zeros_like(self.scores)
        for a, chosen in zip(adv, sets):
            delta[chosen] += a
        self.scores += self.score_lr * delta * p * (1 - p)
        self.history.append({"scores": self.scores.tolist(), "rewards": rewards})

    # ---- checkpoints ----

    def state_dict(self) -> dict:
        return {"scores": self.scores.clone(), "generator": self.generator.get_state(),
                "active_layers": list(self.active_layers), "history_len": len(self.history)}

    def load_state_dict(self, sd: dict) -> None:
        if sd["scores"].shape != self.scores.shape:
            raise ValueError(f"state_dict has scores for {sd['scores'].numel()} layers, this model has {len(self.layers)}")
        self.scores.copy_(sd["scores"])
        self.generator.set_state(sd["generator"])
        self._switch(list(sd["active_layers"]))
