"""ID3: step-by-step unmasking of individual parameters (ID^3, TACL 2025), as a drop-in optimizer."""
import hashlib
import operator
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from winnow import ops
from winnow.dtypes import stat_dtype
from winnow.optim import shards
from winnow.optim.masked_adamw import MaskedAdamW
from winnow.optim.profiled_step import profiled_step
from winnow.sharded_topk import sharded_topk


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


def _sample_positions(numel: int) -> Tensor:
    """The flat positions of a parameter that its fingerprint samples: a stride, at most 4096."""
    return torch.arange(0, numel, max(1, numel // 4096))[:4096]


def fingerprint(named: Iterable[tuple[str, Tensor]]) -> str:
    """A hash of the base weights' names, shapes, dtypes and a strided sample of their values.
    FSDP2 shards (DTensors): every rank contributes the sampled values it holds (one small
    all-gather of the samples, not of the weights) and all get the unsharded run's hash."""
    named = list(named)
    samples = []
    for _, p in named:
        positions = _sample_positions(p.numel())
        span = shards.local_span(p)
        mine = positions[(positions >= span.start) & (positions < span.start + span.numel)]
        values = shards.local_flat(p.detach())[(mine - span.start).to(p.device)].to(torch.float64).cpu()
        samples.append((mine, values))
    if any(shards.is_sharded(p) for _, p in named):
        everyone = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, samples)
        samples = [_merge_samples([rank[i] for rank in everyone]) for i in range(len(named))]
    h = hashlib.sha256()
    for (name, p), (_, values) in zip(named, samples):
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
        h.update(values.numpy().tobytes())
    return h.hexdigest()


def _merge_samples(parts):
    """(positions, values) of every rank -> one value per position, by position (replicas agree)."""
    positions = torch.cat([a for a, _ in parts])
    values = torch.cat([b for _, b in parts])
    unique, first = _first_of_each(positions)
    return unique, values[first]


def _first_of_each(index: Tensor) -> tuple[Tensor, Tensor]:
    """(sorted unique values of `index`, the position of each one's first occurrence)."""
    unique, inverse = torch.unique(index, return_inverse=True)
    first = torch.full((unique.numel(),), index.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse.cpu(), torch.arange(index.numel()), reduce="amin")
    return unique, first


def _check_block_aligned(named, spans, block_size: int) -> None:
    """Under FSDP2 with blocks: every shard starts and ends on a block boundary (a unit's score is
    a sum over its elements, which one rank must hold). Checked on every rank together, so that
    all raise rather than some waiting in the first step's all-gather."""
    bad = [n for (n, p), span in zip(named, spans) if span.numel and
           (span.start % block_size or ((span.start + span.numel) % block_size and span.start + span.numel < p.numel()))]
    flag = torch.tensor([len(bad)], dtype=torch.int64)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if int(flag):
        raise ValueError(f"block_size={block_size}: under FSDP2 each shard of an ID3 parameter must start on a "
                         f"block boundary (this rank: {bad[:3] or 'fine, another rank is not'}); use block_size=1 "
                         "or a block size that divides the rows each rank holds times the row length")


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

    FSDP2 (every parameter a DTensor shard along dim 0): each rank scores its own shard, picks
    its local top-u candidates, and one all-gather of (score, global index) rows per step gives
    every rank the same global top-u as one process (same tie rule); each rank unmasks its own.
    With block_size > 1 every shard must start on a block boundary. `masks()` is then this
    rank's part, `state_dict()` DCP-ready (per-parameter DTensors), `save_sparse` a collective
    that rank 0 writes: the unsharded run's file.
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
        sharded = [shards.is_sharded(p) for _, p in named]
        if any(sharded) and not all(sharded):
            raise ValueError("params: under FSDP2 every parameter ID3 trains must be a DTensor shard, or none "
                             f"(plain: {[n for (n, _), s in zip(named, sharded) if not s][:3]})")
        self._sharded = all(sharded)
        self._spans = [shards.local_span(p) for _, p in named]
        if self._sharded:
            _check_block_aligned(named, self._spans, block_size)
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
        # Workspace (not optimizer state): a unit mask and a score buffer per parameter (its local shard).
        self._offsets = [span.start // block_size for span in self._spans]  # first local unit, in the whole
        self._units = [(span.numel + block_size - 1) // block_size for span in self._spans]  # local units
        self._total_units = [(p.numel() + block_size - 1) // block_size for p in self._params]  # all ranks
        self._unmasked = [torch.zeros(n, dtype=torch.bool, device=p.device) for n, p in zip(self._units, self._params)]
        # Unit scores only where the selection needs them stored (blocks, or shards): with one
        # element per unit, ops.id3_topk computes H inside the selection.
        self._fused = block_size == 1 and not self._sharded
        self._h_floor = 0.0  # the fused CPU scan's floor on H (a speed hint, not state: see _select)
        # one unit per element: the masks shaped like their parameters, as the kernels take them
        # (views, so they follow every in-place change)
        self._unmasked_shaped = [m.view(self._local(p).shape) for m, p in zip(self._unmasked, self._params)
                                 ] if block_size == 1 else None
        self._scores = [] if self._fused else [
            torch.zeros(self._local(p).shape, dtype=stat_dtype(p.dtype), device=p.device) for p in self._params]
        # (element indices in the whole parameter, their values before training), one entry per unmasking step
        self._initial = [[] for _ in self._params]
        self._initial_steps = [[] for _ in self._params]  # the step of each entry of _initial
        self._count = [0] * len(self._params)  # unmasked units per parameter (this rank's), on the host
        self._global_count = [0] * len(self._params)  # unmasked units per parameter, all ranks
        self._every_index = list(range(len(self._params)))  # _select's idx when every param has a grad
        self._total_units_all = sum(self._total_units)

    @staticmethod
    def _local(p: Tensor) -> Tensor:
        return p.to_local() if shards.is_sharded(p) else p

    def unmask_count_at(self, step: int) -> int:
        base, extra = divmod(self.budget, self.total_steps)
        return base + (1 if step < extra else 0)

    def unmasked_count(self) -> int:
        """Unmasked units over the whole model (all ranks)."""
        return sum(self._global_count)

    def masks(self) -> dict[Tensor, Tensor]:
        """{parameter: bool tensor of its shape (of its local shard under FSDP2), True where unmasked}."""
        out = {}
        for p, m in zip(self._params, self._unmasked):
            shape = self._local(p).shape
            if self.id3_block_size == 1:
                out[p] = m.view(shape).clone()
            else:
                out[p] = m.repeat_interleave(self.id3_block_size)[: shape.numel()].view(shape)
        return out

    def workspace_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._unmasked + self._scores)

    @torch.no_grad()
    def _select(self) -> list[Tensor]:
        """Score the masked units and return the newly unmasked unit indices of each parameter."""
        def none():
            return [torch.zeros(0, dtype=torch.int64)] * len(self._params)

        grads = [p.grad for p in self._params]
        if all(g is not None for g in grads):  # (the common case: no per-parameter lists to build)
            idx, local = self._every_index, self._params
            unmasked, unmasked_shaped = self._unmasked, self._unmasked_shaped
            masked = self._total_units_all - sum(self._global_count)
        else:
            idx = [i for i, g in enumerate(grads) if g is not None]
            if not idx:
                return none()
            grads = [grads[i] for i in idx]
            local = [self._params[i] for i in idx]
            unmasked = [self._unmasked[i] for i in idx]
            unmasked_shaped = None if self._unmasked_shaped is None else [self._unmasked_shaped[i] for i in idx]
            masked = sum(self._total_units[i] - self._global_count[i] for i in idx)  # host-side counts: no sync
        if self._sharded:
            local, grads = [self._local(p) for p in local], [self._local(g) for g in grads]
        bs = self.id3_block_size
        k = min(self.unmask_count_at(self.id3_step), masked)
        if k == 0:  # budget < total_steps leaves its late steps nothing to unmask: no scan (every rank alike)
            return none()
        if self._fused and local[0].device.type == "cpu":
            # The CPU scan leaves out H below a floor while at least k entries reach it (same
            # result, fewer tiles keyed): half the last step's k-th best H, which moves little.
            chosen, kth = torch.ops.winnow._masked_topk_id3_from(
                local, grads, unmasked_shaped, k, self.id3_eps, self.id3_exponent, self._h_floor)
            self._h_floor = 0.5 * float(kth)  # a CPU tensor: no device sync
        elif self._fused:
            chosen = ops.id3_topk(local, grads, unmasked_shaped, k,
                                  eps=self.id3_eps, exponent=self.id3_exponent)
        else:
            # zeros first: a non-finite H (left untouched by the update) counts as 0, as in ops.id3_topk
            for i in idx:
                self._scores[i].zero_()
            ops.importance_update_id3(
                local, grads, [self._scores[i] for i in idx],
                unmasked_shaped if bs == 1 else None,
                eps=self.id3_eps, exponent=self.id3_exponent, beta=0.0,
                nonfinite=torch.zeros(len(idx), dtype=torch.int64, device=local[0].device),
            )
            if bs == 1:
                unit_scores = [self._scores[i].view(-1) for i in idx]
            else:  # a block's score is the sum of its elements' H (the partial last block padded with 0)
                unit_scores = []
                for i in idx:
                    s = self._scores[i].view(-1)
                    pad = self._units[i] * bs - s.numel()
                    unit_scores.append(torch.nn.functional.pad(s, (0, pad)).view(-1, bs).sum(1))
            if self._sharded:  # (its counts: every rank's unmasked units, for the global totals)
                chosen, counts = sharded_topk(unit_scores, unmasked, [self._offsets[i] for i in idx], k)
            else:
                chosen = ops.masked_topk(unit_scores, unmasked, k)
        if not self._sharded:
            counts = [c.numel() for c in chosen]
        if idx is self._every_index:
            self._global_count = list(map(operator.add, self._global_count, counts))
            return list(chosen)
        out = none()
        for i, c, n in zip(idx, chosen, counts):
            out[i] = c
            self._global_count[i] += n
        return out

    @profiled_step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.id3_step >= self.total_steps:
            raise ValueError(f"ID3 was built for total_steps={self.total_steps} steps; step {self.id3_step + 1} is beyond it")
        chosen = self._select()
        grown = [i for i, c in enumerate(chosen) if c.numel()]
        if self._fused and grown and len(self.param_groups) == 1:
            self._unmask_together(grown, chosen)
        else:
            for i in grown:
                self._unmask(i, chosen[i])
        self._update()
        self.id3_step += 1
        return loss

    def _unmask(self, i: int, new: Tensor) -> None:
        """Unmask units `new` (indices into this rank's units) of parameter i: record the values
        they start from, mark them, give them fresh optimizer state."""
        p = self._params[i]
        new = new.to(p.device)
        bs = self.id3_block_size
        flat = shards.local_flat(p.detach())
        if bs == 1:  # units are elements (a step touches dozens of tensors: few ops each)
            elems = new
        else:
            elems = (new[:, None] * bs + torch.arange(bs, device=p.device)).view(-1)
            elems = elems[elems < flat.numel()]
        start = self._spans[i].start
        # kept on the device: a .cpu() here would sync every step; save_sparse moves them once
        # (indexing with a tensor copies: the values stay those from before this step)
        self._initial[i].append((elems + start if start else elems, flat[elems]))
        self._initial_steps[i].append(self.id3_step)
        self._unmasked[i][new] = True
        self._count[i] += new.numel()
        # masked units never trained: fresh state, appended (MaskedAdamW counts blocks in the whole)
        self._append_fresh(p, new + self._offsets[i])

    def _unmask_together(self, grown: list[int], chosen: list[Tensor]) -> None:
        """_unmask for every parameter that grew, in one op (one element per unit, unsharded: the
        common case, where the per-parameter ops cost more than the scan)."""
        params = [self._params[i] for i in grown]
        states = [self._state(p, all_active=False) for p in params]
        keys = self._keys(self.param_groups[0])
        new = [chosen[i] for i in grown]
        initial, blocks, steps, *moments = torch.ops.winnow._id3_unmask(
            params, new, [s["active_blocks"] for s in states], [s["block_step"] for s in states],
            *([s[k] for s in states] for k in keys), *([[]] if len(keys) == 2 else []))
        torch.ops.winnow._id3_mark_unmasked([self._unmasked[i] for i in grown], new)
        for j, (i, state) in enumerate(zip(grown, states)):
            self._initial[i].append((chosen[i], initial[j]))
            self._initial_steps[i].append(self.id3_step)
            self._count[i] += chosen[i].numel()
            state["active_blocks"], state["block_step"] = blocks[j], steps[j]
            for k, values in zip(keys, moments):
                state[k] = values[j]

    # ---- checkpoints and export ----

    def _globals(self) -> dict:
        return {"step": self.id3_step, "budget": self.budget, "total_steps": self.total_steps,
                "block_size": self.id3_block_size, "fingerprint": self.base_fingerprint,
                "unmasked_per_param": list(self._global_count)}

    def state_dict(self) -> dict:
        """MaskedAdamW's, plus ID3's own: a top-level "id3" section; under FSDP2, which carries
        only "state" and "param_groups" through torch.distributed.checkpoint, ID3's scalars in
        the first param group and per parameter two DTensors placed like it: id3_initial (each
        unmasked element's value before training, the current value elsewhere) and
        id3_unmask_step (int32: the step that unmasked the element, -1 masked)."""
        sd = super().state_dict()
        if self._sharded:
            sd["param_groups"][0]["id3"] = self._globals()
            for index, (p, lst) in enumerate(zip(self._params, self._initial)):
                flat = shards.local_flat(p.detach())
                initial, order = flat.clone(), torch.full((flat.numel(),), -1, dtype=torch.int32, device=p.device)
                for step, (elems, values) in zip(self._initial_steps[index], lst):
                    initial[elems - self._spans[index].start] = values
                    order[elems - self._spans[index].start] = step
                sd["state"][index]["id3_initial"] = shards.as_dtensor(initial, p)
                sd["state"][index]["id3_unmask_step"] = shards.as_dtensor(order, p)
            return sd
        sd["id3"] = {
            "step": self.id3_step, "budget": self.budget, "total_steps": self.total_steps,
            "block_size": self.id3_block_size, "unmasked": [m.clone() for m in self._unmasked],
            "initial": [[(a.clone(), b.clone()) for a, b in lst] for lst in self._initial],
            "fingerprint": self.base_fingerprint,
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        if self._sharded:
            self._load_sharded(state_dict)
            return
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
        self._global_count = list(self._count)
        self._initial = [[(a.clone(), b.clone()) for a, b in lst] for lst in extra["initial"]]
        self._initial_steps = [list(range(len(lst))) for lst in self._initial]  # their order is what counts
        self.id3_step = int(extra["step"])

    def _check_globals(self, extra) -> None:
        if extra is None:
            raise ValueError("state_dict has no 'id3' entry in its first param group (not saved by a sharded winnow.ID3)")
        for key in ("budget", "total_steps", "block_size"):
            mine = {"budget": self.budget, "total_steps": self.total_steps, "block_size": self.id3_block_size}[key]
            if extra[key] != mine:
                raise ValueError(f"state_dict was saved with {key}={extra[key]}, this ID3 has {mine}")
        if len(extra["unmasked_per_param"]) != len(self._params):
            raise ValueError("state_dict's unmasked counts do not match these parameters")

    def _load_sharded(self, state_dict: dict) -> None:
        groups = state_dict.get("param_groups") or [{}]
        extra = groups[0].get("id3")
        self._check_globals(extra)
        per_param, own = {}, {}
        for pid, entry in state_dict["state"].items():
            own[pid] = {k: v for k, v in entry.items() if k not in ("id3_initial", "id3_unmask_step")}
            per_param[pid] = entry
        super().load_state_dict({"state": own, "param_groups": [{k: v for k, v in g.items() if k != "id3"}
                                                                for g in groups]})
        pids = [pid for g in groups for pid in g["params"]]
        bs = self.id3_block_size
        for i, (p, pid) in enumerate(zip(self._params, pids)):
            entry = per_param.get(pid, {})
            if "id3_initial" not in entry or "id3_unmask_step" not in entry:
                raise ValueError(f"state of parameter {pid}: no id3_initial / id3_unmask_step (not a sharded ID3's)")
            initial = shards.local_flat(entry["id3_initial"]).to(p.device)
            order = shards.local_flat(entry["id3_unmask_step"]).to(p.device)
            if order.numel() != self._spans[i].numel:
                raise ValueError(f"state of parameter {pid}: saved for a shard of {order.numel()} elements, "
                                 f"this one holds {self._spans[i].numel}")
            self._unmasked[i].zero_()
            self._unmasked[i][torch.nonzero(order >= 0).view(-1) // bs] = True
            self._count[i] = int(self._unmasked[i].sum())
            self._initial[i], self._initial_steps[i] = [], []
            for step in torch.unique(order[order >= 0]).tolist():
                local = torch.nonzero(order == step).view(-1)
                self._initial[i].append((local + self._spans[i].start, initial[local]))
                self._initial_steps[i].append(int(step))
        self._global_count = [int(c) for c in extra["unmasked_per_param"]]
        self.id3_step = int(extra["step"])

    def _sparse_entries(self) -> list:
        """Per parameter, None or (step of each entry, element index in the whole parameter, value
        before training, value now), on the CPU."""
        out = []
        for i, (p, lst) in enumerate(zip(self._params, self._initial)):
            if not lst:
                out.append(None)
                continue
            idx = torch.cat([a for a, _ in lst])
            steps = torch.cat([torch.full((a.numel(),), s, dtype=torch.int64) for s, (a, _) in
                               zip(self._initial_steps[i], lst)])
            current = shards.local_flat(p.detach())[idx - self._spans[i].start]
            out.append((steps, idx.cpu(), torch.cat([b for _, b in lst]).cpu(), current.cpu()))
        return out

    @torch.no_grad()
    def save_sparse(self, path: str, absolute: bool = False) -> None:
        """safetensors: per parameter name, `<name>.indices` (flat int64) and `<name>.delta`
        (value - initial value), plus `<name>.values` with absolute=True; the base model's
        fingerprint is in the metadata. Under FSDP2 every rank calls it (one gather of the
        unmasked entries to rank 0) and rank 0 writes the file an unsharded run writes."""
        from safetensors.torch import save_file

        tensors = {}
        entries = self._sparse_entries()
        if self._sharded:  # every rank's (step, index, initial, current) to rank 0, which writes
            everyone = [None] * torch.distributed.get_world_size() if torch.distributed.get_rank() == 0 else None
            torch.distributed.gather_object(entries, everyone, dst=0)
            if torch.distributed.get_rank() != 0:
                return
            entries = [_merge_entries([rank[i] for rank in everyone]) for i in range(len(self._params))]
        for name, p, entry in zip(self.names, self._params, entries):
            if entry is None:
                continue
            _, idx, init, current = entry
            tensors[f"{name}.indices"] = idx.contiguous()
            tensors[f"{name}.delta"] = (current.to(torch.float32) - init.to(torch.float32)).contiguous() \
                if p.dtype != torch.float64 else (current - init).contiguous()
            if absolute:
                tensors[f"{name}.values"] = current.contiguous()
        save_file(tensors, path, metadata={"format": "winnow-id3-sparse", "fingerprint": self.base_fingerprint,
                                           "budget": str(self.budget), "block_size": str(self.id3_block_size)})


def _merge_entries(parts):
    """Every rank's (steps, indices, initial, current) of one parameter -> one, ordered like an
    unsharded run's (by step, then index); replicas' duplicates dropped."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    steps, idx, init, current = (torch.cat([p[k] for p in parts]) for k in range(4))
    key = steps * (int(idx.max()) + 1) + idx
    _, first = _first_of_each(key)  # sorted by key: by step, then index
    return steps[first], idx[first], init[first], current[first]


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
