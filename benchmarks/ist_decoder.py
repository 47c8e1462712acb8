"""IST's memory on a 30-layer decoder: peak training memory of LoRA+IST vs LoRA on the bundled
SmolLM2-135M-Instruct with the `winnow finetune --task causal-lm` task's own batches (16 QuaRTz
questions, its precision), gradient checkpointing off and on, IST's state policies keep and drop
(and offload, which only differs from keep on a GPU).

Each contender runs `memory_steps` steps of the demo's training loop (winnow.demo.finetune) in a
fresh process and reports, over the loaded, set-up model: the peak of live tensor bytes
("allocated": torch.cuda's peak allocated on a GPU, torch.profiler's allocation events on the
CPU), everything the steps hold, recomputation and temporaries included; on the CPU also the rise
of the resident set (a second fresh process: the profiler's own records would be in it), which
adds the allocator's heap and fragmentation; and winnow.memory.TrainingMemory's exact count of
saved activations + gradients + optimizer state (the `winnow finetune` table's "peak train MB").

winnow bench ist-decoder   (needs the packages `make demo-llm` installs; not part of --all)
"""
import json
import subprocess
import sys

import torch

from benchmarks import harness

# (label, method, IST state policy, gradient checkpointing)
CONTENDERS = [
    ("lora", "lora", "keep", False),
    ("lora+ist", "ist", "keep", False),
    ("lora+ist (drop state)", "ist", "drop", False),
    ("lora+ist (offload state)", "ist", "offload", False),
    ("lora, checkpointing", "lora", "keep", True),
    ("lora+ist, checkpointing", "ist", "keep", True),
    ("lora+ist (drop state), checkpointing", "ist", "drop", True),
    ("lora+ist (offload state), checkpointing", "ist", "offload", True),
]


def measure(method: str, policy: str, checkpointing: bool, device: str, steps: int, finetune_argv=(),
            allocated: bool = False) -> dict:
    """In a fresh process: the peaks over `steps` training steps of `method`: the whole process's
    (RSS on the CPU, or with `allocated` live tensor bytes; allocated on a GPU) and the exact count.
    `finetune_argv`: options of `winnow finetune` (a test points it at a tiny model and data)."""
    from winnow.demo import finetune
    from winnow.demo.lm_task import CausalLMTask
    from winnow.memory import PeakMemory, TrainingMemory

    ap = finetune.parser()
    args = ap.parse_args(["--task", "causal-lm", "--device", device, "--steps", str(steps), "--batch-size", "16",
                          "--test-size", "20", "--val-size", "20", "--quiet", "--ist-state-policy", policy]
                         + (["--gradient-checkpointing"] if checkpointing else []) + list(finetune_argv))
    finetune.resolve(args, ap)
    finetune.check_protocol(args, ap)
    args.model = args.model or finetune._bundled_model("causal-lm")[0]
    task = CausalLMTask(args)
    m = finetune.build_method(method, task, args)
    exact = TrainingMemory(m.model, m.opts)
    with PeakMemory(device, allocated=allocated) as whole:
        for _ in finetune.training_steps(m, task, args, exact):
            pass
    return {"peak MB": whole.peak_bytes / 2**20, "saved+grads+state MB": exact.peak_bytes / 2**20,
            "precision": args.precision}


def _in_fresh_process(method, policy, checkpointing, device: torch.device, steps: int, allocated: bool) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.ist_decoder", method, policy, str(int(checkpointing)),
                          device.type, str(steps), str(int(allocated))], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(device: torch.device, memory_steps: int = 10) -> dict:
    rows, lora = [], {}
    on_cpu = device.type == "cpu"
    for label, method, policy, checkpointing in CONTENDERS:
        if on_cpu and policy == "offload":
            continue
        r = _in_fresh_process(method, policy, checkpointing, device, memory_steps, allocated=True)
        r["allocated peak MB"] = r["peak MB"]
        if on_cpu:
            r["RSS peak MB"] = _in_fresh_process(method, policy, checkpointing, device, memory_steps,
                                                 allocated=False)["peak MB"]
        if method == "lora":
            lora[checkpointing] = r
        base = lora[checkpointing]
        row = {"method": label}
        for col in ["allocated peak MB", "saved+grads+state MB"] + (["RSS peak MB"] if on_cpu else []):
            row[col] = r[col]
            row[col.replace(" MB", "") + " vs LoRA"] = r[col] / base[col]
        rows.append(row)
    header = (f"IST (update_ratio 0.25) vs LoRA r=8 on SmolLM2-135M-Instruct (30 layers), batches of 16 QuaRTz "
              f"questions, {r['precision']}, {harness.device_name(device)}; peak over {memory_steps} steps, one fresh "
              f"process each (vs LoRA: against LoRA with the same checkpointing)")
    cols = ["method"] + [c for c in rows[0] if c != "method"]
    return {"header": header, "table": harness.format_table(rows, cols), "rows": rows}


if __name__ == "__main__":  # the child: python -m benchmarks.ist_decoder METHOD POLICY CHECKPOINTING DEVICE STEPS ALLOCATED
    method, policy, checkpointing, dev, steps, allocated = sys.argv[1:7]
    print(json.dumps(measure(method, policy, checkpointing == "1", dev, int(steps), allocated=allocated == "1")))
