"""AdaLoRA allocator benchmark: winnow's fused RankAllocator vs peft's on the same gradients.

Default case (the AdaLoRA issue's): BERT-base shapes, 12 layers x (query, key, value, attention
output, intermediate, output) = 72 adapted matrices, init_r 12: about 2M adapter elements.
Non-mask step = update_ipt; mask step = update_ipt + mask_to_budget.
"""
import copy

import torch

from benchmarks import harness


class _Layer(torch.nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        for name in ("query", "key", "value", "attn_out"):
            setattr(self, name, torch.nn.Linear(hidden, hidden))
        self.intermediate = torch.nn.Linear(hidden, inter)
        self.output = torch.nn.Linear(inter, hidden)


class _Encoder(torch.nn.Module):
    def __init__(self, layers, hidden, inter):
        super().__init__()
        self.layer = torch.nn.ModuleList([_Layer(hidden, inter) for _ in range(layers)])


def run(device: torch.device, layers: int = 12, hidden: int = 768, inter: int = 3072, init_r: int = 12,
        rounds: int = 15) -> dict:
    from peft import AdaLoraConfig, get_peft_model

    from winnow.adalora import accelerate

    torch.manual_seed(0)
    cfg = AdaLoraConfig(init_r=init_r, target_r=4, total_step=1000, tinit=10, tfinal=10, deltaT=10,
                        target_modules=["query", "key", "value", "attn_out", "intermediate", "output"])
    theirs = get_peft_model(_Encoder(layers, hidden, inter), cfg).to(device)
    ours = accelerate(copy.deepcopy(theirs))
    gen = torch.Generator().manual_seed(1)
    for model in (theirs, ours):
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.grad = torch.randn(p.shape, generator=gen).to(device)
    a_theirs, a_ours = theirs.base_model.rankallocator, ours.base_model.rankallocator
    mod_theirs, mod_ours = theirs.base_model.model, ours.base_model.model
    n_elems = sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    budget = a_theirs.init_bgt // 2
    syncs_before = a_ours.host_syncs
    samples = harness.time_interleaved({
        "peft update_ipt": lambda: a_theirs.update_ipt(mod_theirs),
        "winnow update_ipt": lambda: a_ours.update_ipt(mod_ours),
        "peft mask step": lambda: (a_theirs.update_ipt(mod_theirs), a_theirs.mask_to_budget(mod_theirs, budget)),
        "winnow mask step": lambda: (a_ours.update_ipt(mod_ours), a_ours.mask_to_budget(mod_ours, budget)),
    }, device, rounds=rounds)
    mask_calls = rounds + 3  # warmup included
    syncs_per_mask = (a_ours.host_syncs - syncs_before) / mask_calls
    modules = len(a_theirs.name_set)
    rows = []
    for kind, peft_key, ours_key in (("non-mask step", "peft update_ipt", "winnow update_ipt"),
                                     ("mask step", "peft mask step", "winnow mask step")):
        rows.append({
            "step": kind,
            "peft ms": harness.median(samples[peft_key]) * 1e3,
            "winnow ms": harness.median(samples[ours_key]) * 1e3,
            "speedup": harness.paired_speedup(samples[peft_key], samples[ours_key]),
            "peft host syncs": 0 if kind == "non-mask step" else 1 + modules,  # kthvalue().item() + tolist per module
            "winnow host syncs": 0 if kind == "non-mask step" else syncs_per_mask,
        })
    header = (f"AdaLoRA allocator: {modules} adapted matrices, init_r {init_r}, {n_elems} adapter elements, "
              f"budget {budget}/{a_theirs.init_bgt}, on {harness.device_name(device)}")
    cols = ["step", "peft ms", "winnow ms", "speedup", "peft host syncs", "winnow host syncs"]
    return {"header": header, "table": harness.format_table(rows, cols), "rows": rows}
