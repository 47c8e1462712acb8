"""winnow.memory: exact training-memory accounting and the sampled RSS peak."""
import time

import torch

from winnow.memory import PeakMemory, TrainingMemory


def test_training_memory_counts_saved_activations_grads_and_state_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters())
    tm = TrainingMemory(model, [opt])
    x = torch.randn(5, 8)
    with tm.forward():
        loss = model(x).square().sum()
    loss.backward()
    opt.step()
    # saved: x for the first weight's grad (5*8 floats), the ReLU output (5*16), which the second
    # Linear also saves (the same storage, counted once), and the output (5*4) that square() saves;
    # parameters are not counted
    saved = (5 * 8 + 5 * 16 + 5 * 4) * 4
    param_bytes = (8 * 16 + 16 + 16 * 4 + 4) * 4
    state = 2 * param_bytes + 4 * 4  # exp_avg, exp_avg_sq, and a float32 step per parameter
    assert tm.end_step() == saved + param_bytes + state
    opt.zero_grad()
    with tm.forward():
        model(x[:1]).sum()  # a smaller step: the peak stays at the larger one
    assert tm.end_step() < tm.peak_bytes == saved + param_bytes + state


def test_peak_memory_sees_a_block_that_is_freed_before_exit(device):
    """A 64 MiB block, alive for 50 sampling intervals, then freed inside the window: the peak
    holds it. On CUDA the count is the allocator's, exact; on the CPU it is sampled RSS, which
    other threads of the process move too, so the window is wide (but below two such blocks)."""
    block = 64 << 20
    with PeakMemory(device) as pm:
        big = torch.ones(block // 4, device=device)
        big.add_(1)
        if device.type == "cpu":
            time.sleep(50 * pm.interval)  # the sampler runs every interval: it cannot miss the block
        del big
    if device.type == "cuda":
        assert pm.peak_bytes == block
    else:
        assert block - (8 << 20) <= pm.peak_bytes < 2 * block, pm.peak_bytes / 2**20


def test_allocated_peak_counts_live_tensor_bytes_exactly_on_the_cpu():
    """allocated=True: the largest sum of tensors allocated in the block and alive at once (here
    a and b, 8 MiB; c comes after a is freed), not RSS; a tensor older than the block and freed
    inside it does not lower the count."""
    older = torch.ones(1 << 18)
    with PeakMemory("cpu", allocated=True) as pm:
        a, b = torch.ones(1 << 20), torch.ones(1 << 20)
        del a, older
        c = torch.ones(1 << 19)
        del b, c
    assert pm.peak_bytes == 8 << 20
