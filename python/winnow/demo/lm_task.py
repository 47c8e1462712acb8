"""`winnow finetune --task causal-lm`: a decoder fine-tuned on instruction pairs or multiple-choice
questions (default: the bundled SmolLM2-135M-Instruct on QuaRTz), the data, loss and evaluation
that the fine-tuning loop (winnow.demo.finetune) drives. The pieces are winnow.causal_lm's."""
import math

import torch

from winnow import causal_lm as clm
from winnow.records import as_list, column, read_records


def _split(items: list, test_size: int, val_size: int, key, what: str) -> dict[str, list]:
    from winnow.demo.tweets import stratified_split

    if test_size + val_size >= len(items):
        raise ValueError(f"--test-size + --val-size ({test_size + val_size}) leave no training data from "
                         f"{len(items)} {what}")
    return stratified_split(items, {"test": test_size, "val": val_size, "train": None}, seed=0, key=key)


class CausalLMTask:
    """Multiple choice (a choices column, or the bundled QuaRTz): trained as prompt -> answer,
    evaluated by each choice's log-likelihood (accuracy) and the answer's loss per token.
    Instruction pairs: trained on the response tokens, evaluated by the held-out loss."""

    kind = "causal-lm"
    PROBE_EXAMPLES = 32  # held out of training for IST's probes (at most a tenth of it)

    def __init__(self, args):
        import transformers

        self.args = args
        config = transformers.AutoConfig.from_pretrained(args.model)
        if not clm.is_causal_lm(config):
            raise ValueError(f"--model {args.model}: its config names no *ForCausalLM architecture "
                             f"({config.architectures}); use --task classification for an encoder")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self.choice = args.data is None or args.choices_column in read_records(args.data)[0]
        items = self._items()
        key = (lambda q: q[2]) if self.choice else (lambda _: 0)  # stratified by the right answer
        splits = _split(items, args.test_size, args.val_size, key, "rows")
        train = splits["train"]
        n_probe = min(self.PROBE_EXAMPLES, max(1, len(train) // 10))
        probe, train = train[:n_probe], train[n_probe:] or train
        encode = self._encode
        self.train = [self._example(encode(item, i)) for i, item in enumerate(train)]
        self.probe = [self._example(encode(item, i)) for i, item in enumerate(probe)]
        self.val = [encode(item, i) for i, item in enumerate(splits["val"])]
        self.test = [encode(item, i) for i, item in enumerate(splits["test"])]
        self.source = "QuaRTz" if args.data is None else str(args.data)

    # ---- data ----

    def _items(self) -> list:
        args = self.args
        if args.data is None:
            from winnow.demo import quartz

            return quartz.load()
        rows = read_records(args.data)
        if self.choice:
            questions = column(rows, args.question_column, args.data, "--question-column")
            choices = column(rows, args.choices_column, args.data, "--choices-column")
            answers = column(rows, args.answer_column, args.data, "--answer-column")
            out = []
            for i, (q, c, a) in enumerate(zip(questions, choices, answers)):
                where = f"--data {args.data}, row {i + 1}"
                opts = as_list(c, where)
                try:
                    out.append((str(q), opts, clm.letter_index(a, len(opts))))
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
            return out
        prompts = column(rows, args.prompt_column, args.data, "--prompt-column")
        responses = column(rows, args.response_column, args.data, "--response-column")
        return [(str(p), str(r)) for p, r in zip(prompts, responses)]

    def _encode(self, item, i):
        if self.choice:
            return clm.encode_question(self.tokenizer, item[0], item[1], item[2], self.args.chat_template)
        return clm.encode_instruction(self.tokenizer, item[0], item[1], self.args.chat_template, self.args.max_length)

    def _example(self, encoded) -> clm.Example:
        return clm.question_example(encoded) if self.choice else encoded

    def describe(self) -> str:
        shape = "multiple choice" if self.choice else "instruction pairs"
        return (f"{self.source} ({shape}): {len(self.train)} train / {len(self.val)} val / {len(self.test)} test "
                f"(stratified, seed 0)")

    # ---- the model ----

    def load_model(self, seed: int):
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(seed)
        return transformers.AutoModelForCausalLM.from_pretrained(self.args.model)

    def targets(self, model) -> list[str]:
        return clm.target_modules(model)

    def head(self, model) -> str | None:
        return None  # nothing new to train: the LM head is the pretrained (often tied) embedding

    # ---- training ----

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.args.batch_size)

    def train_batches(self, epoch: int, seed: int):
        from winnow.demo.finetune import _length_grouped, order_seed

        lengths = torch.tensor([len(e.input_ids) for e in self.train])
        gen = torch.Generator().manual_seed(order_seed(seed, epoch))
        for idx in _length_grouped(lengths, self.args.batch_size, gen):
            yield clm.collate([self.train[i] for i in idx.tolist()], self.pad_id)

    def loss(self, model, batch):
        return clm.lm_loss(model, batch)

    def probe_loss(self, model, device) -> float:
        return clm.mean_loss(model, self.probe, self.pad_id, batch_size=len(self.probe), device=device)

    # ---- evaluation ----

    def _bar(self, split):
        return None if self.args.quiet else f"  scoring {split}"

    def validate(self, model, device) -> dict:
        bs = self.args.eval_batch_size
        if self.choice:
            return {"val acc": clm.score_choices(model, self.val, self.pad_id, bs, device, self._bar("val"))["accuracy"]}
        return {"val loss": clm.mean_loss(model, self.val, self.pad_id, bs, device, self._bar("val"))}

    def evaluate(self, model, device) -> dict:
        bs = self.args.eval_batch_size
        if self.choice:
            test = clm.score_choices(model, self.test, self.pad_id, bs, device, self._bar("test"))
            return {**self.validate(model, device), "test acc": test["accuracy"],
                    "test acc/token": test["accuracy_per_token"], "test loss": test["answer_loss"]}
        return {**self.validate(model, device),
                "test loss": clm.mean_loss(model, self.test, self.pad_id, bs, device, self._bar("test"))}

    @property
    def columns(self) -> list[str]:
        return ["val acc", "test acc", "test acc/token", "test loss"] if self.choice else ["val loss", "test loss"]

    @property
    def selection(self) -> tuple[str, bool]:
        """(validation metric, higher is better): how --lr-grid chooses."""
        return ("val acc", True) if self.choice else ("val loss", False)
