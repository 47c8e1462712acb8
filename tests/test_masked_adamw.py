"""MaskedAdamW, the drop-in optimizer: against torch.optim.AdamW, masks, checkpoints, AMP, errors."""
import copy

import pytest
import torch

from winnow.optim import MaskedAdamW


def make_model(device, dtype=torch.float32):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(13, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3)).to(device, dtype)


def train(model, opt, steps, device, sched=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(6, 13, generator=gen).to(device, next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()


def groups(model, **second):
    params = list(model.parameters())
    return [{"params": params[:2]}, {"params": params[2:], **second}]


@pytest.mark.parametrize("amsgrad, maximize", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("block_size", [64, 7, "tensor"])
def test_density_one_matches_torch_adamw(device, amsgrad, maximize, block_size):
    a, b = make_model(device), make_model(device)
    hp = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, amsgrad=amsgrad, maximize=maximize)
    oa = torch.optim.AdamW(groups(a, lr=3e-3, weight_decay=0.0), **hp)
    ob = MaskedAdamW(groups(b, lr=3e-3, weight_decay=0.0), **hp, block_size=block_size)
    sa = torch.optim.lr_scheduler.StepLR(oa, step_size=10, gamma=0.5)
    sb = torch.optim.lr_scheduler.StepLR(ob, step_size=10, gamma=0.5)
    train(a, oa, 50, device, sa)
    train(b, ob, 50, device, sb)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-6)


def test_inactive_blocks_untouched_and_late_blocks_get_own_bias_correction(device):
    p = torch.randn(256, device=device, requires_grad=True)
    opt = MaskedAdamW([p], lr=0.1, weight_decay=0.5, block_size=64)
    opt.set_mask(p, torch.tensor([True, False, True, False], device=device))
    before = p.detach().clone()
    for _ in range(5):
        p.grad = torch.randn_like(p)
        opt.step()
    assert torch.equal(p[64:128], before[64:128]) and torch.equal(p[192:], before[192:])
    assert not torch.equal(p[:64], before[:64])
    opt.activate(p, [1])
    assert opt.state[p]["block_step"].tolist() == [5, 0, 5]
    # A block activated late behaves like a fresh AdamW on that block.
    q = p[64:128].detach().clone().requires_grad_()
    ref = torch.optim.AdamW([q], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        g = torch.randn_like(p)
        p.grad, q.grad = g, g[64:128].clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p[64:128], q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", ["keep", "drop", "offload"])
def test_state_policy(device, policy):
    p = torch.randn(128, device=device, requires_grad=True)
    opt = MaskedAdamW([p], lr=0.1, block_size=64, state_policy=policy)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    m_block1 = opt.state[p]["exp_avg"][64:].clone()
    full_bytes = opt.state_bytes()
    opt.deactivate(p, [1])
    assert opt.active_blocks(p).tolist() == [0]
    if policy == "drop":
        assert opt.state_bytes() < full_bytes
    if policy == "offload":
        assert opt.state[p]["parked_exp_avg"].device.type == "cpu"
        if device.type == "cuda":  # on a CPU-only run "offloaded" state is where it was
            assert opt.state_bytes() < full_bytes <= opt.state_bytes(include_offloaded=True)
    opt.activate(p, [1])
    if policy == "drop":
        assert opt.state[p]["block_step"].tolist() == [3, 0]
        assert torch.count_nonzero(opt.state[p]["exp_avg"][64:]) == 0
    else:
        assert opt.state[p]["block_step"].tolist() == [3, 3]
        assert torch.equal(opt.state[p]["exp_avg"][64:], m_block1)


def test_whole_tensor_deactivation_skips_param(device):
    model = make_model(device)
    opt = MaskedAdamW(model.parameters(), lr=0.1, weight_decay=0.3, block_size="tensor")
    first = model[0].weight
    train(model, opt, 2, device)
    opt.deactivate(first)
    frozen = first.detach().clone()
    train(model, opt, 3, device)
    assert torch.equal(first, frozen)
    opt.activate(first)
    train(model, opt, 1, device)
    assert not torch.equal(first, frozen)


def test_grad_none_is_skipped(device):
    model = make_model(device)
    opt = MaskedAdamW(model.parameters(), lr=0.1, weight_decay=0.3)
    w = model[2].weight
    before = w.detach().clone()
    x = torch.randn(4, 13, device=device)
    model(x).sum().backward()
    w.grad = None
    opt.step()
    assert torch.equal(w, before) and w not in opt.state


def test_kept_step_lists_follow_every_change(device):
    """The step keeps its argument lists between steps: after each kind of change (masks set,
    grown, emptied, grads gone and back, params reordered, removed or replaced, state reloaded,
    a copy pickled, state entries replaced) it must update exactly what an optimizer that
    rebuilds them every step updates."""
    models = [make_model(device) for _ in range(2)]
    opts = [MaskedAdamW(groups(m), lr=0.05, weight_decay=0.1, block_size=8) for m in models]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 13, generator=gen).to(device)

    def step_both(change=None):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            if change is not None:
                change(model, opt)
        opts[1]._plans.clear()  # the second one rebuilds its lists
        for opt in opts:
            opt.step()
        for a, b in zip(*(m.parameters() for m in models)):
            assert torch.equal(a, b)

    def set_mask(model, opt):
        w = model[0].weight
        opt.set_mask(w, torch.arange(opt.num_blocks(w), device=device) % 3 == 0)

    step_both()
    step_both()
    step_both(set_mask)
    step_both(lambda m, o: o._append_fresh(m[0].weight, torch.tensor([1, 4], device=device)))
    step_both(lambda m, o: setattr(m[2].weight, "grad", None))
    step_both()
    step_both(lambda m, o: o.deactivate(m[0].bias))
    step_both(lambda m, o: o.activate(m[0].bias))
    step_both(lambda m, o: o.load_state_dict(copy.deepcopy(o.state_dict())))
    models[0], opts[0] = copy.deepcopy((models[0], opts[0]))  # through __getstate__ / __setstate__
    step_both()

    def swap_first_two(model, opt):  # same params, same state, another order in the group
        params = opt.param_groups[0]["params"]
        params[0], params[1] = params[1], params[0]

    step_both(swap_first_two)
    step_both(swap_first_two)  # and back
    step_both(lambda m, o: o.param_groups[0]["params"].pop())  # a param leaves its group
    step_both()
    step_both(lambda m, o: o.state.pop(m[2].weight))  # its moments reset: fresh state, fully active
    step_both(lambda m, o: o.state.__setitem__(m[2].bias, {}))
    step_both(lambda m, o: o.state.clear())
    step_both()
    # moments reset by assigning new tensors (the lists held the old ones), on a param in the
    # step and on one whose blocks are all inactive
    step_both(lambda m, o: o.state[m[0].weight].update(
        exp_avg=torch.zeros_like(o.state[m[0].weight]["exp_avg"]),
        exp_avg_sq=torch.zeros_like(o.state[m[0].weight]["exp_avg_sq"])))
    step_both(lambda m, o: o.state[m[0].weight].update(block_step=torch.zeros_like(o.state[m[0].weight]["block_step"])))
    step_both(lambda m, o: o.deactivate(m[2].bias))
    step_both(lambda m, o: o.state[m[2].bias].update(exp_avg=o.state[m[2].bias]["exp_avg"].clone()))
    step_both(lambda m, o: o.activate(m[2].bias))
    step_both()

    def replace_first(model, opt):  # another tensor, without state, in the first param's place
        extra = torch.nn.Parameter(torch.linspace(-1, 1, 5, device=device))
        extra.grad = torch.linspace(1, 2, 5, device=device)
        model.register_parameter("extra", extra)  # compared with the other model's below
        opt.param_groups[0]["params"][0] = extra

    step_both(replace_first)
    step_both()


def test_state_bytes_proportional_to_density(device):
    p = torch.randn(64 * 1000, device=device, requires_grad=True)
    dense = MaskedAdamW([p], block_size=64)
    p.grad = torch.randn_like(p)
    dense.step()
    sparse = MaskedAdamW([p], block_size=64)
    sparse.set_mask(p, torch.arange(1000, device=device) % 10 == 0)
    dense_adamw = 2 * p.numel() * 4
    assert dense.state_bytes() <= 1.03 * dense_adamw
    assert sparse.state_bytes() <= 0.12 * dense_adamw


@pytest.mark.parametrize("policy", ["keep", "offload"])
def test_checkpoint_resume_is_bitwise_identical(device, policy):
    def run(steps_before, resume):
        model = make_model(device)
        opt = MaskedAdamW(groups(model, lr=5e-3), lr=1e-2, weight_decay=0.1, amsgrad=True, block_size=16,
                          state_policy=policy)
        w = model[0].weight
        opt.set_mask(w, torch.arange(opt.num_blocks(w), device=device) % 3 != 0)
        train(model, opt, steps_before, device, seed=0)
        opt.deactivate(w, [1])  # something parked, too
        if resume:
            sd = copy.deepcopy(opt.state_dict())
            msd = copy.deepcopy(model.state_dict())
            model = make_model(device)
            model.load_state_dict(msd)
            opt = MaskedAdamW(groups(model, lr=5e-3), lr=1e-2, weight_decay=0.1, amsgrad=True, block_size=16,
                              state_policy=policy)
            opt.load_state_dict(sd)
        opt.activate(model[0].weight, [1])
        train(model, opt, 4, device, seed=1)
        return model, opt

    a, oa = run(3, resume=False)
    b, ob = run(3, resume=True)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    for p in b.parameters():
        s = ob.state[p]
        assert s["active_blocks"].dtype == torch.int64 and s["exp_avg"].dtype == torch.float32


def test_bf16_params_keep_fp32_state_through_load(device):
    model = make_model(device, torch.bfloat16)
    opt = MaskedAdamW(model.parameters(), lr=1e-2)
    train(model, opt, 2, device)
    opt2 = MaskedAdamW(model.parameters(), lr=1e-2)
    opt2.load_state_dict(opt.state_dict())
    for p in model.parameters():
        assert opt2.state[p]["exp_avg"].dtype == torch.float32
        assert opt2.state[p]["active_blocks"].dtype == torch.int64


def test_load_state_dict_rejects_other_layout_and_changes_nothing(device):
    model = make_model(device)
    opt = MaskedAdamW(model.parameters(), lr=1e-2, block_size=8)
    train(model, opt, 2, device)
    snapshot = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["block_size"] = 16
    with pytest.raises(ValueError, match="block_size 8 does not match 16"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["params"] = bad["param_groups"][0]["params"][:2]
    with pytest.raises(ValueError, match="has 4 params but the state_dict's has 2"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"][:-1]
    with pytest.raises(ValueError, match="exp_avg must hold"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for pid, s in snapshot["state"].items():
        for k, v in s.items():
            assert torch.equal(v, after["state"][pid][k]) if isinstance(v, torch.Tensor) else v == after["state"][pid][k]


def test_grad_scaler_skips_exactly_the_inf_steps():
    model = make_model("cpu")
    ref = make_model("cpu")
    opt = MaskedAdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        x = torch.randn(6, 13, generator=gen)
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        if step in (2, 4):
            model[0].weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        if step not in (2, 4):  # the reference simply does not take the skipped steps
            ref_opt.zero_grad()
            ref(x).pow(2).mean().backward()
            ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert all(int(s["block_step"].max()) == 4 for s in opt.state.values())


def test_bad_input():
    p = torch.randn(10, requires_grad=True)
    with pytest.raises(ValueError, match="block_size must be a positive int or 'tensor'"):
        MaskedAdamW([p], block_size=0)
    with pytest.raises(ValueError, match="state_policy must be one of"):
        MaskedAdamW([p], state_policy="swap")
    with pytest.raises(TypeError, match="complex"):
        MaskedAdamW([torch.randn(3, dtype=torch.complex64, requires_grad=True)])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        MaskedAdamW([p], lr=-1)
    opt = MaskedAdamW([p], block_size=4)
    with pytest.raises(ValueError, match=r"block mask must have shape \(3,\)"):
        opt.set_mask(p, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="block_mask is on meta but the parameter is on cpu"):
        opt.set_mask(p, torch.ones(3, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match=r"block indices must be in \[0, 3\)"):
        opt.activate(p, [3])
    with pytest.raises(ValueError, match="not managed by this optimizer"):
        opt.set_mask(torch.randn(4), torch.ones(1, dtype=torch.bool))
    q = torch.randn(10, requires_grad=True)
    opt.add_param_group({"params": [q]})
    before = p.detach().clone()
    p.grad = torch.randn(10)  # a good gradient in the first group ...
    q.grad = torch.randn(10).to_sparse()  # ... and a sparse one in the second
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(p, before) and len(opt.state) == 0  # nothing stepped, no state created


def test_state_watch_reports_each_replacement_once():
    """winnow._C.StateWatch (the kept plan's check): a param whose watched object was replaced is
    reported until refreshed, then not; a changed container, state set or param list is None."""
    from winnow import _C

    params = [torch.zeros(2), torch.zeros(3), torch.zeros(4)]
    states = [{"a": torch.zeros(1), "b": torch.zeros(1)}, None, {"a": torch.zeros(1)}]
    container = {p: s for p, s in zip(params, states) if s is not None}
    group = {"params": list(params), "amsgrad": False}

    def watch():
        return _C.StateWatch(container, list(container.values()), params, False, states, ["a", "b"])

    w = watch()
    assert w.changed(container, group) == []
    states[2]["b"] = torch.zeros(1)  # absent when read: a change
    states[0]["a"] = torch.zeros(1)
    assert w.changed(container, group) == [0, 2]
    assert w.changed(container, group) == [0, 2]  # until refreshed
    w.refresh([0, 2])
    assert w.changed(container, group) == []
    del states[0]["b"]
    assert w.changed(container, group) == [0]
    assert watch().changed(dict(container), group) is None  # another container
    assert watch().changed(container, {**group, "amsgrad": True}) is None
    assert watch().changed(container, {**group, "params": params[::-1]}) is None
    assert watch().changed(container, {**group, "params": params[:2]}) is None
    w = watch()
    container[params[1]] = {}  # a state added
    assert w.changed(container, group) is None
    with pytest.raises(IndexError):
        w.refresh([3])


def test_steps_after_the_first_run_on_the_kept_native_plan(device, monkeypatch):
    """From the second step on, a step whose lists hold runs through winnow._C.MaskedAdamWPlan
    (no Python op call); it must update what torch's AdamW does, and go back through the op
    exactly when a grad appears or goes away, in the step's params or in the others."""
    model, ref = make_model(device), make_model(device)
    hp = dict(lr=1e-2, weight_decay=0.1)
    opt = MaskedAdamW(groups(model), **hp)
    ref_opt = torch.optim.AdamW(groups(ref), **hp)
    through_op = []
    step_through_op = opt._step_through_op
    monkeypatch.setattr(opt, "_step_through_op", lambda: (through_op.append(1), step_through_op()))
    gen = torch.Generator().manual_seed(0)

    def step(drop=None):
        x = torch.randn(6, 13, generator=gen).to(device)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            if drop is not None:
                m[drop].weight.grad = None
            o.step()
        for a, b in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        return len(through_op)

    step(), step()  # the lists built (the second group's first step changes the first's state)
    n = len(through_op)
    assert [step(), step(), step()] == [n] * 3  # native
    assert [step(drop=2), step(drop=2)] == [n + 1] * 2  # a grad gone: rebuilt once
    assert [step(), step()] == [n + 2] * 2  # and back
    assert [step(drop=0), step(), step()] == [n + 3, n + 4, n + 4]  # in the first group


def test_a_single_group_steps_in_one_call_with_the_hyperparameters_of_each_step(device, monkeypatch):
    """One group: the kept plan reads lr, betas, weight_decay, eps and maximize from the group in
    C++ (MaskedAdamWPlan.step_group) at every step; a group it cannot read so (betas a list) goes
    the general way, and both update what torch's AdamW does."""
    model, ref = make_model(device), make_model(device)
    hp = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    opt, ref_opt = MaskedAdamW(model.parameters(), **hp), torch.optim.AdamW(ref.parameters(), **hp)
    general = []
    hyper = opt._hyper
    monkeypatch.setattr(opt, "_hyper", lambda group: (general.append(1), hyper(group))[1])
    changes = [{}, {}, {"lr": 3e-3}, {"betas": (0.8, 0.95)}, {"weight_decay": 0.0, "eps": 1e-6},
               {"maximize": True}, {"lr": torch.tensor(2e-3)}, {"betas": [0.9, 0.99], "maximize": False}]
    gen = torch.Generator().manual_seed(0)
    for step, change in enumerate(changes):
        x = torch.randn(6, 13, generator=gen).to(device)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.param_groups[0].update(change)
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
        for a, b in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        if step == 1:
            through_general = len(general)
    assert len(general) == through_general + 1  # only the step whose betas are a list


def test_a_group_whose_params_had_no_grad_is_watched(device):
    model, ref = make_model(device), make_model(device)
    opt = MaskedAdamW(groups(model), lr=1e-2)
    ref_opt = torch.optim.AdamW(groups(ref), lr=1e-2)
    x = torch.randn(6, 13, device=device)
    for step in range(4):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            if step < 2:  # the second group (the last layer) has no grad at first: no launch at all
                m[2].weight.grad = m[2].bias.grad = None
            o.step()
        for a, b in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_a_sparse_grad_after_the_plan_is_kept_raises_before_any_update(device):
    a, b = torch.randn(10, device=device, requires_grad=True), torch.randn(10, device=device, requires_grad=True)
    opt = MaskedAdamW([{"params": [a]}, {"params": [b]}], block_size=4)
    for _ in range(2):
        a.grad, b.grad = torch.randn(10, device=device), torch.randn(10, device=device)
        opt.step()
    before = a.detach().clone()
    b.grad = b.grad.to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(a, before)


def _step_twice_then_remove(opt, p, handle):
    """Two steps, each with a fresh grad of ones, then the hook `handle` removed (also when a step raised)."""
    try:
        for _ in range(2):
            p.grad = torch.ones(p.shape)
            opt.step()
    finally:
        handle.remove()


@pytest.mark.parametrize("kind", ["pre", "post", "global pre", "global post"])
def test_each_step_hook_alone_runs(kind):
    """Without any other hook, one hook of each kind still runs (the step skips the hook
    machinery only when every hook dict is empty)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    p = torch.randn(8, requires_grad=True)
    opt = MaskedAdamW([p], lr=0.1)
    calls = []
    register = {"pre": opt.register_step_pre_hook, "post": opt.register_step_post_hook,
                "global pre": register_optimizer_step_pre_hook,
                "global post": register_optimizer_step_post_hook}[kind]
    handle = register(lambda o, args, kwargs: calls.append(o))
    _step_twice_then_remove(opt, p, handle)
    assert calls == [opt, opt]
    opt.step()  # removed: not called again
    assert calls == [opt, opt]


def test_step_hooks_and_profiler_range():
    """The step keeps torch.optim's hooks (instance and global, pre hooks may replace the
    arguments) and opens torch's "Optimizer.step#MaskedAdamW.step" range while profiling."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    p = torch.randn(8, requires_grad=True)
    opt = MaskedAdamW([p], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", args, kwargs)))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", args, kwargs)))
    handle = register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append(("global post", args, kwargs)))
    _step_twice_then_remove(opt, p, handle)
    assert [c[0] for c in calls] == ["pre", "post", "global post"] * 2
    closure_calls = []
    replace = opt.register_step_pre_hook(lambda o, args, kwargs: (args, {"closure": lambda: closure_calls.append(1)}))
    opt.step()
    replace.remove()
    assert closure_calls == [1]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "Optimizer.step#MaskedAdamW.step" in {e.name for e in prof.events()}
