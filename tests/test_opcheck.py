"""torch.library.opcheck on every winnow op: schema, fake kernels, autograd registration, AOT dispatch."""
import pytest
import torch

import winnow  # noqa: F401  (registers the ops)


def adalora_args(device, n=37):
    params = [torch.randn(n, device=device), torch.randn(3, 5, device=device, dtype=torch.bfloat16)]
    grads = [torch.randn_like(p) for p in params]
    stats = lambda: [torch.rand(p.shape, device=device) for p in params]  # noqa: E731
    return (params, grads, stats(), stats(), 0.85, 0.85, torch.zeros(2, dtype=torch.int64, device=device))


def id3_args(device, n=37):
    params = [torch.randn(n, device=device), torch.randn(3, 5, device=device, dtype=torch.float64)]
    grads = [torch.randn_like(p) for p in params]
    scores = [torch.rand(params[0].shape, device=device), torch.rand(3, 5, device=device, dtype=torch.float64)]
    masks = [torch.rand(p.shape, device=device) < 0.5 for p in params]
    return (params, grads, scores, masks, 1e-3, 1.0, 0.5, torch.zeros(2, dtype=torch.int64, device=device))


def unmask_args(device):
    params = [torch.randn(37, device=device), torch.randn(3, 5, device=device, dtype=torch.float64)]
    chosen = [torch.tensor([0, 5, 36], device=device), torch.tensor([2], device=device)]
    blocks = [torch.tensor([1], device=device), torch.tensor([0, 7], device=device)]
    steps = [torch.ones(b.numel(), dtype=torch.int32, device=device) for b in blocks]
    moments = lambda: [torch.rand(b.numel(), device=device, dtype=p.dtype) for b, p in zip(blocks, params)]  # noqa: E731
    return (params, chosen, blocks, steps, moments(), moments(), moments())


def mark_args(device):
    masks = [torch.zeros(37, dtype=torch.bool, device=device), torch.zeros(3, 5, dtype=torch.bool, device=device)]
    return (masks, [torch.tensor([0, 5, 36], device=device), torch.tensor([2, 14], device=device)])


def score_args(device):
    ipt = [torch.rand(4, 6, device=device), torch.rand(6, 4, device=device), torch.rand(9, device=device)]
    return (ipt, [torch.rand_like(t) for t in ipt], [1, 0, -1])


@pytest.mark.parametrize(
    "op, make_args",
    [
        (torch.ops.winnow.importance_update_adalora.default, adalora_args),
        (torch.ops.winnow.importance_update_id3.default, id3_args),
        (torch.ops.winnow.importance_score.default, score_args),
        (torch.ops.winnow._id3_unmask.default, unmask_args),
        (torch.ops.winnow._id3_mark_unmasked.default, mark_args),
    ],
)
def test_opcheck(device, op, make_args):
    torch.library.opcheck(op, make_args(device))


def test_fused_update_traces_under_torch_compile(device):
    params, grads, ipt, unc, b1, b2, cnt = adalora_args(device)
    ipt_eager, unc_eager, cnt_eager = [t.clone() for t in ipt], [t.clone() for t in unc], cnt.clone()

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(params, grads, ipt, unc, cnt):
        torch.ops.winnow.importance_update_adalora(params, grads, ipt, unc, 0.85, 0.85, cnt)
        return torch.ops.winnow.importance_score(ipt, unc, [-1, 0])

    compiled_scores = step(params, grads, ipt, unc, cnt)
    torch.ops.winnow.importance_update_adalora(params, grads, ipt_eager, unc_eager, 0.85, 0.85, cnt_eager)
    eager_scores = torch.ops.winnow.importance_score(ipt_eager, unc_eager, [-1, 0])
    for a, b in zip(ipt + unc + compiled_scores, ipt_eager + unc_eager + eager_scores):
        assert torch.equal(a, b)


def test_bookkeeping_ops_record_no_graph(device):
    """The optimizer's and the selections' ops are autograd fallthroughs: called with parameters
    that require grad, grad mode on, their outputs carry no graph (torch's fallback for ops without
    an autograd kernel would give each float output a node that warns in backward, and keep the
    parameters' graph alive through it)."""
    params, *rest = unmask_args(device)
    params = [p.requires_grad_() for p in params]
    with torch.enable_grad():
        initial, blocks, steps, *moments = torch.ops.winnow._id3_unmask(params, *rest)
    outputs = [*initial, *blocks, *steps, *(t for ts in moments for t in ts)]
    assert outputs and not any(t.requires_grad or t.grad_fn is not None for t in outputs)
    assert torch.equal(initial[0], params[0].detach()[torch.tensor([0, 5, 36], device=device)])
