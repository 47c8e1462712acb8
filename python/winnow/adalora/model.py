"""AdaLoRA on any torch model: inject SVD adapters, allocate ranks on the fused kernels, save and
load in peft's format."""
import json
import os
from types import SimpleNamespace

import torch
from torch import nn

from winnow.adalora.allocator import RankAllocator
from winnow.adalora.layers import SVDLinear, adaptable, orthogonality_terms
from winnow.adalora.schedule import check_schedule
from winnow.optim import shards

ORTH_REG = ("peft", "paper")


def _matches(name: str, targets) -> str | None:
    for t in targets:
        if name == t or name.endswith("." + t):
            return t
    return None


def _sort_target_modules(config_path: str) -> None:
    """peft keeps target_modules as a set and writes it in hash order, which changes from process
    to process: sorted, the same adapter always writes the same file."""
    with open(config_path) as f:
        cfg = json.load(f)
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        with open(config_path, "w") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True))


class AdaLoRA:
    """Injects AdaLoRA's SVD adapters (Delta W = P diag(lambda) Q; peft's lora_B, lora_E, lora_A)
    into the nn.Linear / Conv1D modules named by `target_modules` and drives the budget schedule.

    Call `update_and_allocate(step)` after every optimizer.step() with the optimizer-step count,
    and the orthogonal regulariser `orth_reg_loss()` is added to a transformers output's `.loss`
    (orth_reg_in_output=False: add it to your loss yourself). Semantics are peft's AdaLoraModel's; the rank
    allocation runs on winnow's fused importance and rank_prune kernels.

    FSDP2: inject first, then `fully_shard`. Importance is tracked on each rank's shards, a mask
    step completes the triplet scores with one all-reduce and every rank applies the same rank
    pattern; the orthogonality terms are taken in each adapted layer's forward (where FSDP2 has
    the adapters whole), so call orth_reg_loss() after the forward; save_pretrained is then a
    collective (the adapters gathered, rank 0 writes peft's folder).
    """

    def __init__(self, model: nn.Module, target_modules, *, init_r: int = 12, target_r: int = 8,
                 lora_alpha: float = 8.0, lora_dropout: float = 0.0, total_step: int | None = None,
                 tinit: int = 0, tfinal: int = 0, deltaT: int = 1, beta1: float = 0.85, beta2: float = 0.85,
                 orth_reg_weight: float = 0.5, orth_reg: str = "peft", adapter_name: str = "default",
                 orth_reg_in_output: bool = True):
        if isinstance(target_modules, str):
            target_modules = [target_modules]
        target_modules = list(target_modules)
        if not target_modules:
            raise ValueError("target_modules is empty")
        if not (isinstance(init_r, int) and init_r > 0):
            raise ValueError(f"init_r must be a positive int, got {init_r!r}")
        if not (isinstance(target_r, int) and 0 <= target_r <= init_r):
            raise ValueError(f"target_r must be an int in [0, init_r={init_r}], got {target_r!r} (target_r > init_r?)")
        if not (isinstance(deltaT, int) and deltaT > 0):
            raise ValueError(f"deltaT must be a positive int, got {deltaT!r}")
        if orth_reg not in ORTH_REG:
            raise ValueError(f"orth_reg must be one of {ORTH_REG}, got {orth_reg!r}")
        found = {}
        for name, module in model.named_modules():
            t = _matches(name, target_modules)
            if t is not None and adaptable(module):
                found[name] = module
        missing = [t for t in target_modules if not any(_matches(n, [t]) for n in found)]
        if missing:
            raise ValueError(f"target modules {missing} match no nn.Linear / Conv1D module of the model")
        check_schedule(init_r * len(found), target_r * len(found), tinit, tfinal, total_step)
        self.model = model
        self.adapter_name = adapter_name
        self.config = SimpleNamespace(
            init_r=init_r, target_r=target_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            total_step=total_step, tinit=tinit, tfinal=tfinal, deltaT=deltaT, beta1=beta1, beta2=beta2,
            orth_reg_weight=orth_reg_weight, target_modules=target_modules, rank_pattern=None,
        )
        self.orth_reg = orth_reg
        for p in model.parameters():
            p.requires_grad_(False)
        self.modules: dict[str, SVDLinear] = {}
        for name, module in found.items():
            wrapped = SVDLinear(module, init_r, lora_alpha, lora_dropout, adapter_name)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
            self.modules[name] = wrapped
        self.allocator = RankAllocator(model, self.config, adapter_name)
        # Like peft's AdaLoraModel.forward: an output with a .loss (transformers models) gets the
        # orthogonal regularisation added to it. A caller that computes its loss outside the
        # model's forward (winnow.causal_lm.lm_loss) adds orth_reg_loss() itself instead.
        self._hook = model.register_forward_hook(self._add_orth_reg) if orth_reg_in_output else None
        self._sharding_check = model.register_forward_pre_hook(self._record_orth_if_sharded)

    def _record_orth_if_sharded(self, module, args):
        """Before the first forward (and before FSDP2's own hooks, registered later): are the
        adapters sharded? Then their layers record the orthogonality terms in forward."""
        if self._sharded() and self.config.orth_reg_weight > 0:
            for m in self.modules.values():
                m.record_orth = self.orth_reg
        self._sharding_check.remove()

    def _sharded(self) -> bool:
        return shards.is_sharded(next(iter(self.modules.values())).lora_A[self.adapter_name])

    def _add_orth_reg(self, module, args, output):
        loss = getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and self.config.orth_reg_weight > 0:
            output.loss = loss + self.orth_reg_loss().to(loss.device, loss.dtype)
        return output

    # ---- training ----

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for d in (m.lora_A, m.lora_E, m.lora_B) for p in d.values()]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def update_and_allocate(self, global_step: int) -> None:
        """peft's AdaLoraModel.update_and_allocate: importance + masking until total_step - tfinal,
        the final allocation at that step, then the final rank pattern re-applied every step."""
        c = self.config
        if global_step > c.total_step:
            raise ValueError(f"step {global_step} is beyond total_step {c.total_step}")
        final = c.total_step - c.tfinal
        if global_step < final:
            _, rank_pattern = self.allocator.update_and_allocate(self.model, global_step)
            if rank_pattern:
                c.rank_pattern = rank_pattern
        elif global_step == final:
            _, c.rank_pattern = self.allocator.update_and_allocate(self.model, global_step, force_mask=True)
            self.allocator.reset_ipt()
        else:
            self.allocator.mask_using_rank_pattern(self.model, c.rank_pattern)

    def orth_reg_loss(self) -> torch.Tensor:
        """Orthogonality penalty on P and Q, times orth_reg_weight. "peft": mean over A and B of
        ||A A^T - I||_F and ||B^T B - I||_F (unsquared); "paper": the sum of their squares."""
        total, count = None, 0
        for m in self.modules.values():
            if m.record_orth is not None:  # sharded: the terms of the last forward
                if not m.orth_terms and m.lora_A[self.adapter_name].numel():
                    raise RuntimeError("orth_reg_loss() under FSDP2: call it after a forward with gradients on "
                                       "(the adapted layers take the terms while FSDP2 has them whole)")
                terms, m.orth_terms = m.orth_terms, []
            else:
                terms = orthogonality_terms(m.lora_A[self.adapter_name], m.lora_B[self.adapter_name], self.orth_reg)
            for term in terms:
                total = term if total is None else total + term
                count += 1
        if total is None:
            return torch.zeros(())
        if self.orth_reg == "peft":
            total = total / count
        return self.config.orth_reg_weight * total

    def rank_pattern(self) -> dict:
        return self.config.rank_pattern or {}

    # ---- checkpoints: the adapters live in model.state_dict(); this is the schedule's state ----

    def state_dict(self) -> dict:
        """The rank pattern and the allocator's importance statistics: with the model's and the
        optimizer's state dicts, enough to resume a run bitwise (the step count is the caller's).
        Under FSDP2 its structure is fixed (what torch.distributed.checkpoint loads into): the
        pattern as one bool tensor over all triplets with a flag, the statistics as DTensors."""
        if self._sharded():
            return self._fixed_state_dict()
        pattern = self.config.rank_pattern
        return {"rank_pattern": None if pattern is None else {k: list(v) for k, v in pattern.items()},
                "allocator": self.allocator.state_dict()}

    def _pattern_keys(self) -> list[str]:
        return [f"{n}.lora_E.{self.adapter_name}" for n in self.modules]

    def _fixed_state_dict(self) -> dict:
        sizes = [m.lora_E[self.adapter_name].shape[0] for m in self.modules.values()]
        pattern = self.config.rank_pattern
        flat = torch.tensor([bool(v) for k in self._pattern_keys() for v in pattern[k]] if pattern
                            else [False] * sum(sizes), dtype=torch.bool)
        return {"rank_pattern": flat, "has_rank_pattern": torch.tensor(pattern is not None),
                "allocator": self.allocator.fixed_state_dict(self.model)}

    def _load_fixed(self, state_dict: dict) -> None:
        if not {"rank_pattern", "has_rank_pattern", "allocator"} <= state_dict.keys():
            raise ValueError("state_dict must come from a sharded AdaLoRA's state_dict() "
                             "(keys 'rank_pattern', 'has_rank_pattern', 'allocator')")
        pattern = None
        if bool(state_dict["has_rank_pattern"]):
            flat, pattern, at = state_dict["rank_pattern"].tolist(), {}, 0
            for key, m in zip(self._pattern_keys(), self.modules.values()):
                r = m.lora_E[self.adapter_name].shape[0]
                pattern[key], at = flat[at:at + r], at + r
        self.config.rank_pattern = pattern
        self.allocator.load_fixed_state_dict(self.model, state_dict["allocator"])

    def load_state_dict(self, state_dict: dict) -> None:
        if self._sharded():
            self._load_fixed(state_dict)
            return
        if not isinstance(state_dict, dict) or not {"rank_pattern", "allocator"} <= state_dict.keys():
            raise ValueError("state_dict must come from AdaLoRA.state_dict() (keys 'rank_pattern', 'allocator')")
        pattern = state_dict["rank_pattern"]
        if pattern is not None:
            mine = {n for n, _ in self.model.named_parameters() if f"lora_E.{self.adapter_name}" in n}
            unknown = set(pattern) - mine - {n.replace(f".{self.adapter_name}", "") for n in mine}
            if unknown:
                raise ValueError(f"state_dict's rank_pattern names modules this model lacks: {sorted(unknown)[:3]}")
        self.config.rank_pattern = None if pattern is None else {k: list(v) for k, v in pattern.items()}
        self.allocator.load_state_dict(self.model, state_dict["allocator"])

    def ranks(self) -> dict[str, int]:
        """Current rank of each adapted module: the number of non-zero lambda."""
        counts = {n: torch.count_nonzero(shards.local(m.lora_E[self.adapter_name])) for n, m in self.modules.items()}
        if counts and shards.is_sharded(next(iter(self.modules.values())).lora_E[self.adapter_name]):
            stacked = torch.stack(list(counts.values()))
            torch.distributed.all_reduce(stacked)  # each rank counted the rows it holds
            counts = dict(zip(counts, stacked))
        return {n: int(c) for n, c in counts.items()}

    # ---- inference ----

    def merge(self) -> None:
        for m in self.modules.values():
            m.merge()

    def unmerge(self) -> None:
        for m in self.modules.values():
            m.unmerge()

    # ---- peft format ----

    def save_pretrained(self, path: str) -> None:
        """adapter_config.json + adapter_model.safetensors as peft writes them: pruned triplets
        removed by the rank pattern, keys base_model.model.<module>.lora_{A,B,E}."""
        import peft
        from safetensors.torch import save_file

        pattern = {}
        tensors = {}
        whole = lambda t: t.full_tensor() if shards.is_sharded(t) else t  # noqa: E731  (every rank takes part)
        for name, m in self.modules.items():
            a, e, b = (whole(d[self.adapter_name].detach()) for d in (m.lora_A, m.lora_E, m.lora_B))
            key = f"{name}.lora_E.{self.adapter_name}"
            keep = self.rank_pattern().get(key)
            keep = torch.tensor(keep, dtype=torch.bool) if keep is not None else torch.ones(e.shape[0], dtype=torch.bool)
            pattern[f"{name}.lora_E"] = keep.tolist()
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A"] = a[keep].contiguous()
            tensors[f"{prefix}.lora_E"] = e[keep].contiguous()
            tensors[f"{prefix}.lora_B"] = b[:, keep].contiguous()
        if shards.is_sharded(next(iter(self.modules.values())).lora_A[self.adapter_name]) and \
                torch.distributed.get_rank() != 0:
            return
        os.makedirs(path, exist_ok=True)
        c = self.config
        cfg = peft.AdaLoraConfig(
            target_modules=c.target_modules, init_r=c.init_r, target_r=c.target_r, lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout, total_step=c.total_step, tinit=c.tinit, tfinal=c.tfinal, deltaT=c.deltaT,
            beta1=c.beta1, beta2=c.beta2, orth_reg_weight=c.orth_reg_weight, rank_pattern=pattern,
            inference_mode=True,
        )
        cfg.save_pretrained(path)
        _sort_target_modules(os.path.join(path, "adapter_config.json"))
        save_file(tensors, os.path.join(path, "adapter_model.safetensors"))

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str, adapter_name: str = "default") -> "AdaLoRA":
        """Load an AdaLoRA adapter saved by peft (or by save_pretrained) into `model`."""
        from safetensors.torch import load_file

        with open(os.path.join(path, "adapter_config.json")) as f:
            cfg = json.load(f)
        if cfg.get("peft_type") != "ADALORA":
            raise ValueError(f"{path} holds a {cfg.get('peft_type')} adapter, not ADALORA")
        targets = cfg["target_modules"]
        total = cfg.get("total_step") or 1
        self = cls(model, targets, init_r=cfg["init_r"], target_r=min(cfg["target_r"], cfg["init_r"]),
                   lora_alpha=cfg["lora_alpha"], lora_dropout=cfg.get("lora_dropout", 0.0), total_step=total,
                   tinit=0, tfinal=0, deltaT=cfg.get("deltaT", 1), adapter_name=adapter_name)
        state = load_file(os.path.join(path, "adapter_model.safetensors"))
        for name, m in self.modules.items():
            prefix = f"base_model.model.{name}"
            if f"{prefix}.lora_A" not in state:
                raise ValueError(f"{path} has no adapter weights for module {name}")
            a = state[f"{prefix}.lora_A"]
            m.resize(a.shape[0])
            with torch.no_grad():
                for d, key in ((m.lora_A, "lora_A"), (m.lora_E, "lora_E"), (m.lora_B, "lora_B")):
                    d[adapter_name].copy_(state[f"{prefix}.{key}"])
        self.config.rank_pattern = {f"{k}.{adapter_name}": v for k, v in (cfg.get("rank_pattern") or {}).items()}
        self.config.total_step = cfg.get("total_step")
        return self
