"""MaskedAdamW: AdamW that reads, updates and decays only the active blocks of each parameter."""
from collections.abc import Iterable

import torch
from torch import Tensor

from winnow import _C, ops  # noqa: F401  (ops loads the extension: torch.ops.winnow)
from winnow.dtypes import stat_dtype
from winnow.optim import shards
from winnow.optim.profiled_step import profiled_step

STATE_POLICIES = ("keep", "drop", "offload")
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class _StepPlan:
    """The argument lists of a group's fused step, with what they were built from, so that a
    step can tell in a few identity checks whether they still hold, and patch the entries of
    parameters whose state tensors were replaced (ID3 grows dozens of active sets every step; a
    reset of the moments assigns new ones) instead of rebuilding."""

    def __init__(self, group: dict, grads: list, container: dict, keys: tuple[str, ...], launches: list[tuple],
                 entries: list):
        states = [container.get(p) for p in group["params"]]
        self.params = list(group["params"])
        self.has_grad = [g is not None for g in grads]
        self.keys = keys
        self.states = states  # each param's state dict (None: no state yet)
        self.launches = launches  # (device, the op's lists but the grads, positions of its grads or None)
        self.entries = entries  # per param: (launch, slot in its lists) or None when not in the step
        self.launch_of = {device: i for i, (device, _, positions) in enumerate(launches) if positions is not None}
        self.natives = None  # native_launches(): the launches as winnow._C.MaskedAdamWPlan, once asked for
        # What the lists were built from, checked by identity in C++ (after a dense pass has evicted
        # the caches, the same checks in Python cost 0.05 ms a step): the optimizer's state
        # container and every state dict in it, in order (a state cleared, deleted or replaced
        # shows, without hashing parameters), the group's params and amsgrad, and per param the
        # objects the lists hold (active blocks, step counts, moments).
        self.watch = _C.StateWatch(container, list(container.values()), self.params, group["amsgrad"], states,
                                   ["active_blocks", "block_step", *keys])

    def holds(self, group: dict, grads: list, container: dict) -> bool:
        """True when the lists are right for this step (patched where a parameter's active blocks
        were replaced); False when they must be rebuilt."""
        return [g is not None for g in grads] == self.has_grad and self.state_holds(group, container)

    def state_holds(self, group: dict, container: dict) -> bool:
        """`holds` but for the grads (which of the params have one), which the native plans check."""
        changed = self.watch.changed(container, group)  # ID3 changes 33-41 of its 103 every step
        if changed is None:
            return False  # another container, states added or removed, other params
        for i in changed:
            state = self.states[i]
            blocks = state.get("active_blocks")
            if blocks is None or blocks.numel() == 0:
                if self.entries[i] is not None:
                    return False  # the parameter leaves the step
                continue  # its state changed while it stays out of the step
            if self.entries[i] is None:  # it joins (ID3's first unmasked unit of it): appended
                launch = self.launch_of.get(self.params[i].device)
                if launch is None:
                    return False
                columns, positions = self.launches[launch][1:]
                self.entries[i] = (launch, len(positions))
                columns[0].append(self.params[i])
                for column in (*columns[1:len(self.keys) + 1], *columns[4:6]):
                    column.append(None)  # set below
                columns[6].append(state["block_size"])
                positions.append(i)
            launch, slot = self.entries[i]
            columns = self.launches[launch][1]
            for column, key in zip(columns[1:], self.keys):
                column[slot] = state[key]
            columns[4][slot], columns[5][slot] = blocks, state["block_step"]
        if changed:
            self.watch.refresh(changed)
            self.natives = None  # built anew from the patched lists
        return True

    def native_launches(self) -> list[tuple]:
        """(device, winnow._C.MaskedAdamWPlan) per launch, built on first use from the lists. The
        first also watches the group's params left out of the step (no grad, or no active
        block), so a grad appearing or going away there sends the step back to a rebuild; a group
        with no launch gets a plan that only watches."""
        if self.natives is None:
            left_out = [i for i, entry in enumerate(self.entries) if entry is None]
            others = ([self.params[i] for i in left_out], [self.has_grad[i] for i in left_out])
            launches = self.launches or [(None, [[] for _ in range(7)], None)]
            self.natives = [(device, _C.MaskedAdamWPlan(*columns, *(others if k == 0 else ([], []))))
                            for k, (device, columns, _) in enumerate(launches)]
        return self.natives


class MaskedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) over block-sparse masks, on the fused `masked_adamw_step`.

    Every parameter is cut into blocks of `block_size` elements (`block_size="tensor"`: one
    block per tensor, for switching whole layers). Only active blocks are read, updated and
    decayed; an inactive element stays bit-identical. The optimizer state is compact — stored for
    active blocks only, with a step count per block, so a block activated late gets its own bias
    correction — and so its memory is proportional to the active fraction (`state_bytes()`).

    A parameter starts fully active: with no masks this is torch.optim.AdamW. Masks change with
    `set_mask(param, block_mask)`, `activate(param, blocks)` and `deactivate(param, blocks=None)`.
    What happens to the state of blocks that go inactive is `state_policy`: "keep" (kept on the
    device and resumed on reactivation), "drop" (freed; a reactivated block starts afresh) or
    "offload" (moved to CPU memory, brought back on reactivation). A parameter whose grad is None
    is skipped entirely. Works with torch.amp.GradScaler (grad_scale / found_inf, no host sync).

    FSDP2 (DTensor parameters sharded along dim 0): the step runs on each rank's local shard,
    nothing is gathered. Masks and block indices always refer to the full parameter's blocks; a
    rank keeps the blocks its shard touches (a block straddling two shards is updated by both,
    each its own part), so `active_blocks` / `block_mask` report this rank's active blocks and
    `state_bytes()` its share. `state_dict()` gives such a parameter's state as DTensors sharded
    like it (dense: zeros where a block has no state), so torch.distributed.checkpoint saves and
    loads it like torch's own optimizers' state.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        block_size: int | str = 64,
        state_policy: str = "keep",
    ):
        if isinstance(lr, Tensor):
            lr = float(lr)
        if not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"Invalid learning rate: {lr!r} (lr must be >= 0)")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"Invalid epsilon value: {eps!r} (eps must be >= 0)")
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid betas: {betas!r} (each must be in [0, 1))")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"Invalid weight_decay value: {weight_decay!r} (must be >= 0)")
        self._check_block_size(block_size)
        if state_policy not in STATE_POLICIES:
            raise ValueError(f"state_policy must be one of {STATE_POLICIES}, got {state_policy!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad),
                        maximize=bool(maximize), block_size=block_size, state_policy=state_policy)
        self._segments = {}  # sharded param -> its kernel segments' block lists, per active set
        self._plans = {}  # id(param group) -> _StepPlan: the step's argument lists
        super().__init__(params, defaults)
        self._step_supports_amp_scaling = True  # GradScaler hands us grad_scale / found_inf

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._segments, self._plans = {}, {}  # caches of this process's tensors: not pickled

    @staticmethod
    def _check_block_size(block_size) -> None:
        if block_size == "tensor":
            return
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int or 'tensor', got {block_size!r}")

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer params must be tensors, got {type(p).__name__} at position {i}")
            if p.is_complex():
                raise TypeError("MaskedAdamW does not support complex parameters (view them as real first)")
            if not p.is_floating_point():
                raise TypeError(f"MaskedAdamW needs floating-point parameters, got {p.dtype}")
            if not p.is_contiguous():
                raise ValueError("MaskedAdamW needs contiguous parameters (they are updated in place)")
            shards.local_span(p)  # a DTensor placed in a way the step cannot address raises here
        if "block_size" in param_group:
            self._check_block_size(param_group["block_size"])
        if param_group.get("state_policy", "keep") not in STATE_POLICIES:
            raise ValueError(f"state_policy must be one of {STATE_POLICIES}, got {param_group['state_policy']!r}")
        super().add_param_group(param_group)

    # ---- block bookkeeping ----

    def _group_of(self, param: Tensor) -> dict:
        # A scan of every group's params costs O(params) per call, and ID3 asks for each parameter
        # it grows every step: a map from id(param), rebuilt when the groups change (a group dict
        # replaced, as load_state_dict does, or one added).
        cache = getattr(self, "_group_cache", None)
        group = None if cache is None else cache.get(id(param))
        if group is None or not any(group is g for g in self.param_groups) or len(cache) != sum(
                len(g["params"]) for g in self.param_groups):
            cache = {id(p): g for g in self.param_groups for p in g["params"]}
            self._group_cache = cache
            group = cache.get(id(param))
        if group is None:
            raise ValueError("param is not managed by this optimizer")
        return group

    def block_size_of(self, param: Tensor) -> int:
        """Elements per block of `param` (its numel for block_size='tensor')."""
        bs = self._group_of(param)["block_size"]
        return max(1, param.numel()) if bs == "tensor" else bs

    def num_blocks(self, param: Tensor) -> int:
        bs = self.block_size_of(param)
        return (param.numel() + bs - 1) // bs

    def _state(self, param: Tensor, all_active: bool = True) -> dict:
        """The parameter's state; on first use created fully active (or with no active block when
        a mask is about to be set, so that a sparse start never holds dense state)."""
        state = self.state[param]
        if "active_blocks" not in state:
            group = self._group_of(param)
            bs = self.block_size_of(param)
            first, end = self._own_blocks(param)
            if not all_active:
                end = first
            nb = end - first
            state["block_size"] = bs
            state["active_blocks"] = torch.arange(first, end, dtype=torch.int64, device=param.device)
            state["block_step"] = torch.zeros(nb, dtype=torch.int32, device=param.device)
            for key in self._keys(group):
                state[key] = torch.zeros(nb * bs, dtype=stat_dtype(param.dtype), device=param.device)
        return state

    def _own_blocks(self, param: Tensor) -> tuple[int, int]:
        """[first, end) of the blocks this rank holds: all of them, or those a shard touches."""
        return shards.local_span(param).blocks(self.block_size_of(param)) if shards.is_sharded(param) \
            else (0, self.num_blocks(param))

    def _mine(self, param: Tensor, blocks: Tensor) -> Tensor:
        """The blocks (full-parameter indices) this rank holds."""
        if not shards.is_sharded(param):
            return blocks
        first, end = self._own_blocks(param)
        return blocks[(blocks >= first) & (blocks < end)]

    @staticmethod
    def _keys(group: dict) -> tuple[str, ...]:
        return _STATE_KEYS if group["amsgrad"] else _STATE_KEYS[:2]

    def _as_blocks(self, param: Tensor, blocks) -> Tensor:
        """Sorted unique int64 block indices from indices or a bool block mask; validated."""
        nb = self.num_blocks(param)
        blocks = torch.as_tensor(blocks, device=param.device)
        if blocks.dtype == torch.bool:
            if blocks.shape != (nb,):
                raise ValueError(f"block mask must have shape ({nb},) for this parameter, got {tuple(blocks.shape)}")
            return blocks.nonzero().view(-1)
        if blocks.is_floating_point() or blocks.is_complex():
            raise TypeError(f"blocks must be integer indices or a bool mask, got {blocks.dtype}")
        blocks = blocks.to(torch.int64).view(-1)
        if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= nb):
            raise ValueError(f"block indices must be in [0, {nb}) for this parameter")
        return torch.unique(blocks)

    def active_blocks(self, param: Tensor) -> Tensor:
        """Sorted indices of the active blocks of `param`."""
        return self._state(param)["active_blocks"].clone()

    def block_mask(self, param: Tensor) -> Tensor:
        """Bool mask over the blocks of `param`: True where active."""
        mask = torch.zeros(self.num_blocks(param), dtype=torch.bool, device=param.device)
        mask[self._state(param)["active_blocks"]] = True
        return mask

    def set_mask(self, param: Tensor, block_mask) -> None:
        """Make exactly the blocks of `block_mask` (bool per block, or indices) active."""
        if isinstance(block_mask, Tensor) and block_mask.dtype == torch.bool and block_mask.device != param.device:
            raise ValueError(f"block_mask is on {block_mask.device} but the parameter is on {param.device}")
        self._rebuild(param, self._mine(param, self._as_blocks(param, block_mask)))

    def activate(self, param: Tensor, blocks=None) -> None:
        """Add blocks (indices or bool mask; None = all) to the active set."""
        if blocks is None:
            new = torch.arange(*self._own_blocks(param), dtype=torch.int64, device=param.device)
        else:
            added = self._mine(param, self._as_blocks(param, blocks))  # validate before any state exists
            new = torch.cat([self._state(param)["active_blocks"], added])
        self._rebuild(param, torch.unique(new))

    def deactivate(self, param: Tensor, blocks=None) -> None:
        """Remove blocks (indices or bool mask; None = the whole tensor) from the active set."""
        gone = None if blocks is None else self._as_blocks(param, blocks)
        state = self._state(param)
        if gone is None:
            keep = state["active_blocks"][:0]
        else:
            keep = state["active_blocks"][~torch.isin(state["active_blocks"], gone)]
        self._rebuild(param, keep)

    def _append_fresh(self, param: Tensor, blocks: Tensor) -> None:
        """Activate blocks known to be inactive and never trained (ID3's growing masks): their state
        starts at zero, so it is appended without re-laying the existing state."""
        state, group = self._state(param, all_active=False), self._group_of(param)
        blocks = self._mine(param, blocks)
        if shards.is_sharded(param):  # the step wants a shard's blocks in order (its partial first block first)
            self._rebuild(param, torch.unique(torch.cat([state["active_blocks"], blocks.to(torch.int64)])))
            return
        bs, n = state["block_size"], blocks.numel()
        state["active_blocks"] = torch.cat([state["active_blocks"], blocks.to(torch.int64)])
        # one op each (ID3 grows dozens of tensors a step): the zeros appended by padding
        state["block_step"] = torch.nn.functional.pad(state["block_step"], (0, n))
        for k in self._keys(group):
            state[k] = torch.nn.functional.pad(state[k], (0, n * bs))

    def _rebuild(self, param: Tensor, new_blocks: Tensor) -> None:
        """Re-lay the compact state for the sorted block list `new_blocks`: kept blocks keep their
        state; blocks that leave are parked (keep / offload) or dropped; blocks that arrive take
        their parked state, or start at zero with step 0."""
        state, group = self._state(param, all_active=False), self._group_of(param)
        bs, keys = state["block_size"], self._keys(group)
        policy = group["state_policy"]
        old = state["active_blocks"]
        sources = [(old, {k: state[k].view(-1, bs) for k in keys}, state["block_step"])]
        if "parked_blocks" in state:
            dev = param.device
            sources.append((state["parked_blocks"].to(dev),
                            {k: state["parked_" + k].to(dev).view(-1, bs) for k in keys},
                            state["parked_block_step"].to(dev)))
        rows = {k: torch.zeros(new_blocks.numel(), bs, dtype=stat_dtype(param.dtype), device=param.device) for k in keys}
        steps = torch.zeros(new_blocks.numel(), dtype=torch.int32, device=param.device)
        for blocks, src_rows, src_steps in sources:
            pos, found = shards.locate(blocks, new_blocks)
            for k in keys:
                rows[k][found] = src_rows[k][pos[found]]
            steps[found] = src_steps[pos[found]]
        if policy != "drop":
            # Park every block that has state but is not active now (old leavers and still-parked ones).
            all_blocks = torch.cat([s[0] for s in sources])
            all_rows = {k: torch.cat([s[1][k] for s in sources]) for k in keys}
            all_steps = torch.cat([s[2] for s in sources])
            # A block that never stepped has zero state: parking it would hold nothing a fresh
            # start does not give, so it is not parked.
            parked = ~torch.isin(all_blocks, new_blocks) & (all_steps > 0)
            home = torch.device("cpu") if policy == "offload" else param.device
            state["parked_blocks"] = all_blocks[parked].to(home)
            state["parked_block_step"] = all_steps[parked].to(home)
            for k in keys:
                state["parked_" + k] = all_rows[k][parked].reshape(-1).to(home)
                if home.type == "cpu" and param.device.type == "cuda":
                    state["parked_" + k] = state["parked_" + k].pin_memory()
        else:
            for k in ("parked_blocks", "parked_block_step", *("parked_" + k for k in keys)):
                state.pop(k, None)
        state["active_blocks"] = new_blocks.contiguous()
        state["block_step"] = steps
        for k in keys:
            state[k] = rows[k].view(-1)

    # ---- the step ----

    @profiled_step
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update()
        return loss

    def _update(self) -> None:
        """The AdamW update of every group's active blocks: the step without its closure and hooks
        (ID3's step runs it after its own selection)."""
        if not self._step_natively():
            with torch.no_grad():
                self._step_through_op()

    @staticmethod
    def _hyper(group: dict) -> tuple:
        beta1, beta2 = group["betas"]
        return (float(group["lr"]), float(beta1), float(beta2), float(group["weight_decay"]), float(group["eps"]),
                bool(group["amsgrad"]), bool(group["maximize"]))

    def _amp_tensors(self, device) -> tuple:
        """GradScaler's grad_scale and found_inf on `device`, as the op takes them (None when not set)."""
        # GradScaler sets these as instance attributes; the instance dict is read without
        # getattr's walk of the class hierarchy (28 -> 9 us a step, cold after a dense pass)
        attributes = self.__dict__
        amp = attributes.get("grad_scale"), attributes.get("found_inf")
        if amp[0] is None and amp[1] is None:
            return amp
        return tuple(None if t is None else t.to(device, torch.float32).view(1) for t in amp)

    def _step_natively(self) -> bool:
        """The step through every group's kept plan (winnow._C.MaskedAdamWPlan: lists held in C++,
        grads read there); False, with nothing done, when some group has none that holds (first
        step, a grad appeared or went away, the state was replaced, a sharded param) or when
        Dynamo traces the step (it traces the op instead)."""
        if torch.compiler.is_compiling():
            return False
        natives = []
        for group in self.param_groups:
            plan = self._plans.get(id(group))
            if plan is None or not plan.state_holds(group, self.state):
                return False
            natives.append((group, plan.native_launches()))
        if len(natives) == 1 and len(natives[0][1]) == 1:
            # the usual case: one call reads the hyperparameters and steps (False: nothing touched)
            group, [(_, native)] = natives[0]
            if native.step_group(group, self.__dict__):
                return True
        # With more than one call, every call's grads are checked before the first touches anything.
        if (len(natives) > 1 or len(natives[0][1]) > 1) and not all(
                native.grads_hold() for _, launches in natives for _, native in launches):
            return False
        for group, launches in natives:
            hyper = self._hyper(group)
            for device, native in launches:
                if not native.step(*hyper, *self._amp_tensors(device)):
                    return False  # only a single call gets here: it touched nothing
        return True

    def _step_through_op(self) -> None:
        """The step through torch.ops.winnow.masked_adamw_step, its lists built (or patched) here."""
        # Check every gradient before touching anything, so a bad one leaves the model unchanged.
        grads_of_groups = []
        for group in self.param_groups:
            grads = [p.grad for p in group["params"]]
            for g in grads:
                if g is not None and g.layout != torch.strided:
                    raise RuntimeError("MaskedAdamW does not support sparse gradients")
            grads_of_groups.append(grads)
        for group, grads in zip(self.param_groups, grads_of_groups):
            hyper = self._hyper(group)
            for device, columns, launch_grads in self._launches(group, grads):
                # The op itself, not ops.masked_adamw_step: these lists are built here, so the
                # wrapper's type checks only cost time; the op validates every tensor.
                torch.ops.winnow.masked_adamw_step(columns[0], launch_grads, *columns[1:], *hyper,
                                                   *self._amp_tensors(device))

    def _launches(self, group: dict, grads: list) -> list[tuple]:
        """Per device: (device, the op's lists but the grads, the grads). The lists are kept in a
        plan and rebuilt only when something they come from changed (the group's params, which of
        them have a grad, amsgrad, the state): at low density building them costs as much as the
        update itself (~0.1 ms for 16 parameters)."""
        plan = self._plans.get(id(group))
        if plan is None or not plan.holds(group, grads, self.state):
            keys = self._keys(group)
            by_device: dict[torch.device, tuple[list[list], list, list[int]]] = {}
            entries = []
            for i, (p, g) in enumerate(zip(group["params"], grads)):
                state = None if g is None else self._state(p)
                if state is None or state["active_blocks"].numel() == 0:
                    entries.append(None)  # no grad, or fully deactivated: no read, no update, no decay
                    continue
                if p.device not in by_device:
                    by_device[p.device] = ([[] for _ in range(7)], [], [])
                columns, launch_grads, positions = by_device[p.device]
                entries.append((list(by_device).index(p.device), len(positions)))
                for param, grad, *rest in self._kernel_views(p, state, keys):
                    for column, x in zip(columns, (param, *rest)):
                        column.append(x)
                    launch_grads.append(grad)
                    positions.append(i)
            for columns, _, _ in by_device.values():
                columns[3] = columns[3] if group["amsgrad"] else []  # max_exp_avg_sqs
            launches = [(device, columns, launch_grads) for device, (columns, launch_grads, _) in by_device.items()]
            if any(shards.is_sharded(p) for p in group["params"]):
                return launches  # a shard's grads are views made for this step: nothing is kept
            self._plans[id(group)] = _StepPlan(
                group, grads, self.state, keys,
                [(device, columns, None if positions == list(range(len(grads))) else positions)
                 for device, (columns, _, positions) in by_device.items()], entries)
            return launches
        return [(device, columns, grads if positions is None else [grads[i] for i in positions])
                for device, columns, positions in plan.launches]

    def _kernel_views(self, p: Tensor, state: dict, keys: tuple[str, ...]) -> list[tuple]:
        """(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, active blocks, block steps, block size)
        of what the fused step updates. A plain parameter is one entry. A shard is the run of
        blocks that starts at a block boundary, and before it, when the shard starts inside a
        block held by the previous rank, that block's part (one block of `head` elements, the
        slots of its state row that those elements have in the whole block); block indices become
        the segment's own."""
        moments = [state[k] for k in keys] + ([None] if len(keys) == 2 else [])
        if not shards.is_sharded(p):
            return [(p, p.grad, *moments, state["active_blocks"], state["block_step"], state["block_size"])]
        bs, blocks = state["block_size"], state["active_blocks"]
        span = shards.local_span(p)
        first, _ = span.blocks(bs)
        head = span.head(bs)
        cached = self._segments.get(p)
        if cached is None or cached[0] is not blocks:  # recomputed when the active set changes only
            head_active = head > 0 and blocks.numel() > 0 and int(blocks[0]) == first
            body = blocks[1:] if head_active else blocks
            cached = (blocks, head_active, (body - (first + (head > 0))).contiguous(),
                      torch.zeros(1, dtype=torch.int64, device=blocks.device))
            self._segments[p] = cached
        _, head_active, body_blocks, zero = cached
        param, grad = shards.local_flat(p), shards.local_flat(p.grad)
        views = []
        if head_active:  # its slots in the block's state row: from the shard's position in the block
            phase = span.start % bs
            views.append((param[:head], grad[:head], *[None if m is None else m[phase:phase + head] for m in moments],
                          zero, state["block_step"][:1], head))
        k = 1 if head_active else 0
        if body_blocks.numel():
            views.append((param[head:], grad[head:], *[None if m is None else m[k * bs:] for m in moments],
                          body_blocks, state["block_step"][k:], bs))
        return views

    # ---- memory and checkpoints ----

    def state_bytes(self, include_offloaded: bool = False) -> int:
        """Bytes of optimizer state (moments, step counts, block indices; parked state on the
        device included, offloaded CPU state only when asked)."""
        total = 0
        for p, state in self.state.items():
            for v in state.values():
                if isinstance(v, Tensor) and (include_offloaded or v.device == p.device):
                    total += v.numel() * v.element_size()
        return total

    def state_dict(self) -> dict:
        """torch.optim.Optimizer's layout. A plain parameter's state is the compact state itself;
        a sharded parameter's is DTensors placed like the parameter, one value per element:
        exp_avg / exp_avg_sq (/ max_exp_avg_sq), element_step (int32, its block's step count, 0
        where the block has no state) and element_active (int8), so that each rank's part is
        saved by torch.distributed.checkpoint and any sharding can load it."""
        packed = super().state_dict()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                if shards.is_sharded(p) and index in packed["state"]:
                    packed["state"][index] = self._sharded_state_dict(p, group)
                index += 1
        return packed

    def _sharded_state_dict(self, p: Tensor, group: dict) -> dict:
        state, keys = self.state[p], self._keys(group)
        sources = [(state["active_blocks"], {k: state[k] for k in keys}, state["block_step"], True)]
        if "parked_blocks" in state:
            sources.append((state["parked_blocks"], {k: state["parked_" + k] for k in keys},
                            state["parked_block_step"], False))
        span = shards.local_span(p)
        dense, step, active = shards.to_dense(span, state["block_size"], sources, like=shards.local_flat(p))
        out = {"block_size": state["block_size"]}
        for k in keys:
            values = dense.get(k)
            if values is None:
                values = torch.zeros(span.numel, dtype=stat_dtype(p.dtype), device=p.device)
            out[k] = shards.as_dtensor(values, p)
        out["element_step"], out["element_active"] = shards.as_dtensor(step, p), shards.as_dtensor(active, p)
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Like torch.optim.Optimizer.load_state_dict, but state tensors keep their dtypes (torch's
        loader would cast block indices and float32 moments to the parameter dtype); the layout is
        checked against these parameters before anything changes."""
        groups, saved_groups = self.param_groups, state_dict.get("param_groups")
        if saved_groups is None or "state" not in state_dict:
            raise ValueError("state_dict must have 'state' and 'param_groups'")
        if len(groups) != len(saved_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, this optimizer has {len(groups)}")
        id_to_param = {}
        for gi, (g, sg) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    f"parameter group {gi} has {len(g['params'])} params but the state_dict's has {len(sg['params'])}"
                )
            for p, pid in zip(g["params"], sg["params"]):
                id_to_param[pid] = (p, sg)
        new_state = {}
        for pid, saved in state_dict["state"].items():
            if pid not in id_to_param:
                raise ValueError(f"state_dict has state for unknown parameter id {pid}")
            p, sg = id_to_param[pid]
            load = self._sharded_loaded_state if shards.is_sharded(p) else self._validated_state
            new_state[p] = load(p, sg, saved, pid)
        super().load_state_dict({"state": {}, "param_groups": saved_groups})
        self.state.clear()
        self._segments.clear()
        self._plans.clear()
        for p, s in new_state.items():
            self.state[p] = s

    def _validated_state(self, p: Tensor, group: dict, saved: dict, pid) -> dict:
        bs_setting = group.get("block_size", 64)
        bs = max(1, p.numel()) if bs_setting == "tensor" else bs_setting
        if saved.get("block_size") != bs:
            raise ValueError(f"state of parameter {pid}: block_size {saved.get('block_size')} does not match {bs}")
        nb = (p.numel() + bs - 1) // bs
        blocks = saved["active_blocks"]
        if blocks.dtype != torch.int64 or blocks.dim() != 1:
            raise ValueError(f"state of parameter {pid}: active_blocks must be a 1-D int64 tensor")
        if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= nb):
            raise ValueError(f"state of parameter {pid}: active_blocks out of range for a parameter of {nb} blocks")
        keys = _STATE_KEYS if group.get("amsgrad") else _STATE_KEYS[:2]
        out = {"block_size": bs}
        home = {k: p.device for k in saved}
        if group.get("state_policy") == "offload":
            home.update({k: torch.device("cpu") for k in saved if k.startswith("parked_")})
        for prefix, blocks_key, step_key in (("", "active_blocks", "block_step"),
                                             ("parked_", "parked_blocks", "parked_block_step")):
            if blocks_key not in saved:
                continue
            n = saved[blocks_key].numel()
            if saved[step_key].numel() != n:
                raise ValueError(f"state of parameter {pid}: {step_key} has {saved[step_key].numel()} entries, expected {n}")
            for k in keys:
                t = saved.get(prefix + k)
                if t is None or t.numel() != n * bs:
                    raise ValueError(f"state of parameter {pid}: {prefix + k} must hold {n * bs} values")
                out[prefix + k] = t.to(device=home[prefix + k], dtype=stat_dtype(p.dtype)).contiguous()
            out[blocks_key] = saved[blocks_key].to(device=home[blocks_key], dtype=torch.int64).contiguous()
            out[step_key] = saved[step_key].to(device=home[step_key], dtype=torch.int32).contiguous()
        return out

    def _sharded_loaded_state(self, p: Tensor, group: dict, saved: dict, pid) -> dict:
        """The compact state of this rank's blocks from the dense DTensors of `state_dict()`."""
        bs_setting = group.get("block_size", 64)
        bs = max(1, p.numel()) if bs_setting == "tensor" else bs_setting
        if saved.get("block_size") != bs:
            raise ValueError(f"state of parameter {pid}: block_size {saved.get('block_size')} does not match {bs}")
        keys = _STATE_KEYS if group.get("amsgrad") else _STATE_KEYS[:2]
        span = shards.local_span(p)
        local = {}
        for k in (*keys, "element_step", "element_active"):
            t = saved.get(k)
            if not shards.is_sharded(t):
                raise ValueError(f"state of parameter {pid}: {k} must be a DTensor placed like the parameter "
                                 "(the state_dict of a sharded MaskedAdamW)")
            flat = shards.local_flat(t)
            if flat.numel() != span.numel or t.shape != p.shape:
                raise ValueError(f"state of parameter {pid}: {k} is {tuple(t.shape)} with {flat.numel()} local "
                                 f"elements; the parameter is {tuple(p.shape)} with {span.numel}")
            local[k] = flat.to(p.device)
        dense = {k: local[k].to(stat_dtype(p.dtype)) for k in keys}
        (blocks, rows, steps), (parked, parked_rows, parked_steps) = shards.to_compact(
            span, bs, dense, local["element_step"], local["element_active"])
        out = {"block_size": bs, "active_blocks": blocks, "block_step": steps, **rows}
        if group.get("state_policy") != "drop" and parked.numel():
            home = torch.device("cpu") if group.get("state_policy") == "offload" else p.device
            out["parked_blocks"], out["parked_block_step"] = parked.to(home), parked_steps.to(home)
            out.update({"parked_" + k: v.to(home) for k, v in parked_rows.items()})
        return out
