"""A drop-in for peft's AdaLoRA RankAllocator on winnow's fused kernels.

Same methods and semantics as peft.tuners.adalora.layer.RankAllocator (update_ipt, budget_schedule,
mask_to_budget, update_and_allocate, mask_using_rank_pattern, reset_ipt, set_total_step), but
one fused importance update for all adapter parameters, one rank_prune call for all modules,
at most one host synchronisation per mask step, and k = 0 handled (masks nothing).
"""
import torch
from torch import nn

from winnow import ops
from winnow.adalora.schedule import budget_schedule
from winnow.importance import ImportanceTracker
from winnow.optim import shards


class RankAllocator:
    def __init__(self, model: nn.Module, peft_config, adapter_name: str):
        self.peft_config = peft_config
        self.adapter_name = adapter_name
        self.beta1 = peft_config.beta1
        self.beta2 = peft_config.beta2
        if not (0 < self.beta1 < 1 and 0 < self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in (0, 1), got {self.beta1}, {self.beta2}")
        self.host_syncs = 0  # host synchronisations so far (one per mask step)
        self._rank_pattern_masks = None
        self.reset_ipt()
        self._set_budget_scheduler(model)

    def set_total_step(self, total_step: int) -> None:
        self.peft_config.total_step = total_step

    def reset_ipt(self) -> None:
        self._tracker = None
        self._triplets = None

    def _set_budget_scheduler(self, model: nn.Module) -> None:
        self.init_bgt = 0
        self.name_set = set()
        for n, p in model.named_parameters():
            if f"lora_A.{self.adapter_name}" in n:
                self.init_bgt += p.size(0)
                self.name_set.add(n.replace("lora_A", "%s"))
        self.name_set = sorted(self.name_set)
        self.target_bgt = self.peft_config.target_r * len(self.name_set)

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        c = self.peft_config
        return budget_schedule(step, self.init_bgt, self.target_bgt, c.tinit, c.tfinal, c.total_step, c.deltaT)

    # ---- importance ----

    def _build(self, model: nn.Module) -> None:
        """Tracker over every adapter parameter (A, E, B of each module, in name_set order)."""
        named = dict(model.named_parameters())
        self._triplets = []  # (name of E, A param, E param, B param) per module
        params = []
        for name_m in self.name_set:
            a, e, b = (named[name_m % key] for key in ("lora_A", "lora_E", "lora_B"))
            self._triplets.append((name_m % "lora_E", a, e, b))
            params += [a, e, b]
        self._tracker = ImportanceTracker(params, mode="adalora", beta1=self.beta1, beta2=self.beta2)

    def update_ipt(self, model: nn.Module) -> None:
        """Fold the current gradients of every lora_A/E/B into the sensitivity and uncertainty EMAs."""
        if self._tracker is None:
            self._build(model)
        self._tracker.update()

    @property
    def exp_avg_ipt(self) -> dict:
        return self._stats_by_name(lambda t: t.exp_avg_ipt)

    @property
    def exp_avg_unc(self) -> dict:
        return self._stats_by_name(lambda t: t.exp_avg_unc)

    def _stats_by_name(self, pick) -> dict:
        if self._tracker is None:
            return {}
        out = {}
        for k, (name_e, *_) in enumerate(self._triplets):
            for j, key in enumerate(("lora_A", "lora_E", "lora_B")):
                out[name_e.replace("lora_E", key)] = pick(self._tracker)[3 * k + j]
        return out

    # ---- masking ----

    def mask_to_budget(self, model: nn.Module, budget: int) -> dict:
        """Mask the lowest-scoring triplets so that `budget` remain (ties below the threshold are
        masked too, like peft); returns the rank pattern {lora_E name: [kept?] * r}."""
        if self._tracker is None:
            self._build(model)
        t = self._tracker
        num_masked = max(0, self.init_bgt - budget)
        idx = lambda j: [3 * k + j for k in range(len(self._triplets))]  # noqa: E731
        if shards.is_sharded(self._triplets[0][2]):
            keep = self._sharded_keep(num_masked)
        else:
            with torch.no_grad():
                _, keep = ops.rank_prune(
                    [e for _, _, e, _ in self._triplets],
                    [t.exp_avg_ipt[i] for i in idx(1)], [t.exp_avg_unc[i] for i in idx(1)],
                    [t.exp_avg_ipt[i] for i in idx(0)], [t.exp_avg_unc[i] for i in idx(0)],
                    [t.exp_avg_ipt[i] for i in idx(2)], [t.exp_avg_unc[i] for i in idx(2)],
                    num_masked,
                )
        keep = keep.tolist()  # the one host synchronisation of a mask step
        self.host_syncs += 1
        pattern, offset = {}, 0
        for name_e, _, e, _ in self._triplets:
            r = e.shape[0]
            pattern[name_e] = keep[offset:offset + r]
            offset += r
        return pattern

    @torch.no_grad()
    def _sharded_keep(self, num_masked: int) -> torch.Tensor:
        """FSDP2: each rank scores the rows of A and E it holds and its rows' share of B's column
        means; one all-reduce completes every triplet's parts on every rank, and rank_prune runs on
        them (its selection rule, on every rank alike), each rank masking the E rows it holds."""
        t = self._tracker
        sizes = [e.shape[0] for _, _, e, _ in self._triplets]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        parts = torch.zeros(3, sum(sizes), dtype=t.exp_avg_ipt[0].dtype, device=t.exp_avg_ipt[0].device)
        for k, (_, a, e, b) in enumerate(self._triplets):
            s_a, s_e, s_b = ((t.exp_avg_ipt[3 * k + j] * t.exp_avg_unc[3 * k + j]) for j in range(3))
            first_e = shards.local_span(e).start  # E is (r, 1): its row = its element
            first_a = shards.local_span(a).start // max(1, a.shape[1])
            parts[0, starts[k] + first_e:starts[k] + first_e + s_e.shape[0]] = s_e.view(-1)
            parts[1, starts[k] + first_a:starts[k] + first_a + s_a.shape[0]] = s_a.mean(dim=1)
            parts[2, starts[k]:starts[k] + sizes[k]] = s_b.sum(dim=0)  # this rank's rows of B
        torch.distributed.all_reduce(parts)
        ones = lambda n: torch.ones(n, 1, dtype=parts.dtype, device=parts.device)  # noqa: E731
        whole_e = [ones(n) for n in sizes]  # stand-ins that rank_prune masks; the real E below
        segments = [slice(starts[k], starts[k] + n) for k, n in enumerate(sizes)]
        out_rows = [b.shape[0] for _, _, _, b in self._triplets]
        _, keep = ops.rank_prune(
            whole_e, [parts[0, sl].view(-1, 1) for sl in segments], [ones(n) for n in sizes],
            [parts[1, sl].view(-1, 1) for sl in segments], [ones(n) for n in sizes],
            [(parts[2, sl] / rows).view(1, -1) for sl, rows in zip(segments, out_rows)],
            [ones(n).view(1, -1) for n in sizes], num_masked)
        for k, (_, _, e, _) in enumerate(self._triplets):
            local = shards.local(e)
            first = shards.local_span(e).start
            local.masked_fill_(~keep[starts[k] + first:starts[k] + first + local.shape[0]].view(-1, 1), 0.0)
        return keep

    def update_and_allocate(self, model: nn.Module, global_step: int, force_mask: bool = False):
        if global_step < self.peft_config.total_step - self.peft_config.tfinal:
            self.update_ipt(model)
        budget, mask_ind = self.budget_schedule(global_step)
        rank_pattern = self.mask_to_budget(model, budget) if (mask_ind or force_mask) else None
        return budget, rank_pattern

    def mask_using_rank_pattern(self, model: nn.Module, rank_pattern: dict) -> None:
        """Re-apply a final rank pattern (every step after total_step - tfinal): the bool masks are
        built once per pattern and reused, not rebuilt from Python lists each step."""
        if self._rank_pattern_masks is None or self._rank_pattern_masks[0] is not rank_pattern:
            truncated = self.adapter_name not in next(iter(rank_pattern.keys()))
            masks = []
            for n, p in model.named_parameters():
                if f"lora_E.{self.adapter_name}" in n:
                    key = n.replace(f".{self.adapter_name}", "") if truncated else n
                    masked = ~torch.tensor(rank_pattern[key], dtype=torch.bool, device=p.device).view(-1, 1)
                    if shards.is_sharded(p):  # the rows this rank holds
                        first = shards.local_span(p).start
                        p, masked = shards.local(p), masked[first:first + shards.local(p).shape[0]]
                    masks.append((p, masked))
            self._rank_pattern_masks = (rank_pattern, masks)
        with torch.no_grad():
            for p, masked in self._rank_pattern_masks[1]:
                p.masked_fill_(masked, 0.0)

    # ---- checkpoints ----

    def state_dict(self) -> dict:
        """The running importance statistics (None before the first update or after the final
        allocation) and the host-sync count."""
        return {"tracker": None if self._tracker is None else self._tracker.state_dict(),
                "host_syncs": self.host_syncs}

    def fixed_state_dict(self, model: nn.Module) -> dict:
        """The same structure whether or not statistics are running (torch.distributed.checkpoint
        loads into it): zero statistics and live=False when there are none."""
        live = self._tracker is not None
        if not live:
            self._build(model)
        tracker = self._tracker.state_dict()
        if not live:
            self.reset_ipt()
        return {"tracker": tracker, "live": torch.tensor(live), "host_syncs": self.host_syncs}

    def load_fixed_state_dict(self, model: nn.Module, state_dict: dict) -> None:
        self.reset_ipt()
        if bool(state_dict["live"]):
            self._build(model)
            self._tracker.load_state_dict(state_dict["tracker"])
        self.host_syncs = int(state_dict.get("host_syncs", 0))

    def load_state_dict(self, model: nn.Module, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or "tracker" not in state_dict:
            raise ValueError("state_dict must come from RankAllocator.state_dict() (a dict with 'tracker')")
        self.reset_ipt()
        if state_dict["tracker"] is not None:
            self._build(model)
            self._tracker.load_state_dict(state_dict["tracker"])
        self.host_syncs = int(state_dict.get("host_syncs", 0))

    # ---- peft interoperability ----

    def load_from_peft(self, model: nn.Module, peft_allocator) -> None:
        """Take over the running statistics of a peft RankAllocator."""
        if not getattr(peft_allocator, "exp_avg_ipt", None):
            return
        self._build(model)
        for k, (name_e, *_) in enumerate(self._triplets):
            for j, key in enumerate(("lora_A", "lora_E", "lora_B")):
                name = name_e.replace("lora_E", key)
                if name in peft_allocator.exp_avg_ipt:
                    self._tracker.exp_avg_ipt[3 * k + j].copy_(peft_allocator.exp_avg_ipt[name])
                    self._tracker.exp_avg_unc[3 * k + j].copy_(peft_allocator.exp_avg_unc[name])


def peft_adalora_tuner(peft_model: nn.Module, who: str) -> nn.Module:
    """The module of a peft AdaLoRA model that owns its RankAllocator (peft's AdaLoraModel); `who`
    names the caller in the error when there is none."""
    # PeftModel forwards attribute reads to its tuner, so look for the module that owns the allocator.
    tuner = next((m for m in peft_model.modules() if "rankallocator" in vars(m)), None)
    if tuner is None:
        raise ValueError(f"{who} needs a peft AdaLoRA model (get_peft_model with an AdaLoraConfig)")
    return tuner


def accelerate(peft_model: nn.Module) -> nn.Module:
    """Swap the RankAllocator of a peft AdaLoRA model for winnow's fused one, in place: same masks,
    same rank_pattern, same calls (model.base_model.update_and_allocate(step)), faster."""
    tuner = peft_adalora_tuner(peft_model, "accelerate()")
    old = tuner.rankallocator
    if isinstance(old, RankAllocator):
        return peft_model
    new = RankAllocator(tuner.model, old.peft_config, old.adapter_name)
    new.load_from_peft(tuner.model, old)
    tuner.rankallocator = new
    return peft_model
