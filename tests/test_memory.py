"""winnow.memory: exact training-memory accounting and the sampled RSS peak."""
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


def test_peak_memory_sees_a_block_that_is_freed_before_exit():
    with PeakMemory("cpu") as pm:
        big = torch.ones(16 << 20)  # 64 MiB, touched
        big.add_(1)
        del big
    assert 56 << 20 <= pm.peak_bytes <= 96 << 20, pm.peak_bytes / 2**20
