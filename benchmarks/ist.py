"""IST benchmark: LoRA+IST vs LoRA, step time (probes included) and peak training memory.

Cases: the demo's task (pretrained MiniLM-L6 on the tweets, batches of 32, length <= 48) and a
BERT-base-size model built from a config (12 layers, hidden 768, batches of 4 x 128 random tokens).
LoRA r=8 on every linear of every layer, head trained densely, winnow MaskedAdamW for both.

Step time: both contenders in one process, interleaved; one round is score_interval (10) optimizer
steps of each, so every round includes one probe phase of IST (n_rollouts eval forwards of a
held-out batch as large as a training batch). Peak memory: each contender in a fresh process,
the rise of its resident set over the loaded model during `memory_steps` steps (winnow.memory).
"""
import itertools
import json
import subprocess
import sys

import torch

from benchmarks import harness

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
CASES = ("minilm-tweets", "bert-base-config")
METHODS = {"lora": None, "lora+ist": "keep", "lora+ist (drop state)": "drop"}


def _case(case: str, seed: int = 0, finetune_argv=()):
    """(model, training batches, probe batch) on the CPU. `finetune_argv`: options of
    `winnow finetune` for the minilm-tweets case (a test points it at a tiny model)."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    if case == "minilm-tweets":
        from winnow.demo import finetune

        # the demo's own parser and data path, fp32 (the demo's defaults, not re-typed here)
        ap = finetune.parser()
        args = ap.parse_args(["--steps", "40", "--device", "cpu", *finetune_argv])
        finetune.resolve(args, ap)
        args.model = args.model or finetune.bundled_model_path()
        data = finetune.prepare(args)
        model = finetune.load_model(args.model, len(args.labels), seed)
        train = list(finetune.batches(*data["train"], args.batch_size, shuffle_seed=seed))
        probe = next(finetune.batches(*data["probe"], args.batch_size))
        return model, train, probe
    if case == "bert-base-config":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=3))
        gen = torch.Generator().manual_seed(seed)

        def batch():
            return {"input_ids": torch.randint(1000, 30000, (4, 128), generator=gen),
                    "labels": torch.randint(0, 3, (4,), generator=gen)}

        return model, [batch() for _ in range(4)], batch()
    raise ValueError(f"unknown case {case!r}; expected one of {CASES}")


def make_trainer(case: str, method: str, device: torch.device, seed: int = 0):
    """A function running one optimizer step of `method` (IST's begin_step and probes included)."""
    import peft

    from winnow.ist import ISTController
    from winnow.optim import MaskedAdamW

    model, train, probe_batch = _case(case, seed)
    cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, modules_to_save=["classifier"])
    model = peft.get_peft_model(model, cfg).to(device)
    move = lambda b: {k: v.to(device) for k, v in b.items()}  # noqa: E731
    train, probe_batch = [move(b) for b in train], move(probe_batch)
    opt = MaskedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, block_size="tensor")
    policy = METHODS[method]
    ctl = ISTController(model, seed=seed, optimizer=opt, state_policy=policy) if policy else None

    @torch.no_grad()
    def probe():
        return model(**probe_batch).loss

    batches, step = itertools.cycle(train), itertools.count()

    def train_step():
        s = next(step)
        if ctl is not None:
            ctl.begin_step(s, probe)
        model(**next(batches)).loss.backward()
        opt.step()
        opt.zero_grad()

    return train_step


def measure_memory(case: str, method: str, device: str, steps: int) -> dict:
    """Run in a fresh process (see main below): peak memory over `steps` training steps."""
    from winnow.memory import PeakMemory

    train_step = make_trainer(case, method, torch.device(device))
    with PeakMemory(device) as pm:
        for _ in range(steps):
            train_step()
    return {"peak MB": pm.peak_bytes / 2**20}


def _memory_in_fresh_process(case: str, method: str, device: torch.device, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.ist", case, method, device.type, str(steps)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(device: torch.device, cases=CASES, rounds: int = 6, memory_steps: int = 20) -> dict:
    rows = []
    for case in cases:
        trainers = {m: make_trainer(case, m, device) for m in ("lora", "lora+ist")}
        rounds_of_10 = {m: (lambda fn=fn: [fn() for _ in range(10)]) for m, fn in trainers.items()}
        samples = harness.time_interleaved(rounds_of_10, device, warmup=1, rounds=rounds)
        del trainers, rounds_of_10
        memory = {m: _memory_in_fresh_process(case, m, device, memory_steps) for m in METHODS}
        for m in METHODS:
            timed = m in samples
            rows.append({
                "case": case, "method": m,
                "ms/step": harness.median(samples[m]) * 100 if timed else float("nan"),
                "time vs LoRA": 1 / harness.paired_speedup(samples["lora"], samples[m]) if timed else float("nan"),
                "peak MB": memory[m]["peak MB"],
                "peak vs LoRA": memory[m]["peak MB"] / memory["lora"]["peak MB"],
            })
    header = (f"IST (update_ratio 0.25, probes every 10 steps, 3 rollouts) vs LoRA r=8 on "
              f"{harness.device_name(device)}; time: median of {rounds} paired rounds of 10 steps; "
              f"peak: rise over the loaded model in {memory_steps} steps, one fresh process each")
    cols = ["case", "method", "ms/step", "time vs LoRA", "peak MB", "peak vs LoRA"]
    return {"header": header, "table": harness.format_table(rows, cols), "rows": rows}


if __name__ == "__main__":  # the memory child: python -m benchmarks.ist CASE METHOD DEVICE STEPS
    case, method, dev, steps = sys.argv[1:5]
    print(json.dumps(measure_memory(case, method, dev, int(steps))))
