"""Causal-LM fine-tuning pieces shared by `winnow finetune --task causal-lm` and users' scripts:
which linear layers to adapt, the two data shapes, the loss and multiple-choice scoring.

- Instruction pairs: prompt -> response, the loss on the response tokens only (the prompt's
  labels are -100), through the tokenizer's chat template when it has one.
- Multiple choice: trained as prompt -> the right answer; evaluated the way lm-evaluation-harness
  scores multiple choice, by the log-likelihood of each choice as a continuation of the prompt
  (`acc`), and by that log-likelihood per token (`acc_norm`-like, per-token normalised).

Logits are computed only where the loss or the scoring needs them (transformers'
`logits_to_keep`): the vocabulary projection of every position (49k columns for SmolLM2) would
otherwise dominate a small model's step.
"""
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # the label of a position that carries no loss (HF's convention)

# Name suffixes of the linear layers worth adapting, per architecture family.
TARGET_SUFFIXES = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # Llama, Qwen2, Gemma, Mistral
    "c_attn", "c_proj", "c_fc",                                                   # GPT-2 (Conv1D)
    "query_key_value", "dense_h_to_4h", "dense_4h_to_h",                          # GPT-NeoX, Falcon
    "Wqkv", "out_proj", "fc1", "fc2", "fc_in", "fc_out",                          # phi, OPT, GPT-J
)


def is_causal_lm(config) -> bool:
    """True when a transformers config names a *ForCausalLM architecture."""
    return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in (config.architectures or []))


def target_modules(model: nn.Module) -> list[str]:
    """The suffixes (peft's target_modules) of the adaptable linear layers of a decoder, found by
    name; the output projection (lm_head) is never adapted."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = set()
    for name, module in model.named_modules():
        if module is head or not _is_linear(module):
            continue
        suffix = name.rsplit(".", 1)[-1]
        if suffix in TARGET_SUFFIXES:
            found.add(suffix)
    if not found:
        raise ValueError(f"{type(model).__name__} has none of the linear layers winnow adapts "
                         f"({', '.join(TARGET_SUFFIXES)})")
    return sorted(found)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's transposed linear


@dataclass
class Example:
    """One training sequence: token ids, and labels that are IGNORE on the prompt."""
    input_ids: list[int]
    labels: list[int]


@dataclass
class Question:
    """One multiple-choice question: the prompt's ids, each choice's continuation ids, the answer."""
    prompt_ids: list[int]
    choice_ids: list[list[int]]
    answer: int


def use_chat_template(tokenizer, chat_template: str = "auto") -> bool:
    if chat_template not in ("auto", "none"):
        raise ValueError(f"chat_template must be 'auto' or 'none', got {chat_template!r}")
    return chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def _ids(encoded) -> list[int]:
    """apply_chat_template / tokenizer output as a plain list of ids (transformers 5 returns a
    BatchEncoding from apply_chat_template(tokenize=True))."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def split_prompt(tokenizer, prompt: str, continuation: str, chat: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, continuation ids) such that their concatenation is the whole text's tokens."""
    if chat:
        user = [{"role": "user", "content": prompt}]
        prompt_ids = _ids(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True))
        full = _ids(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": continuation}],
                                                  tokenize=True))
        if full[:len(prompt_ids)] != prompt_ids:
            raise ValueError("the tokenizer's chat template does not extend the prompt's tokens with the answer; "
                             "use chat_template='none'")
        return prompt_ids, full[len(prompt_ids):]
    prompt_ids = _ids(tokenizer(prompt, add_special_tokens=True))
    rest = _ids(tokenizer(continuation, add_special_tokens=False))
    if tokenizer.eos_token_id is not None:
        rest = rest + [tokenizer.eos_token_id]
    return prompt_ids, rest


def encode_instruction(tokenizer, prompt: str, response: str, chat_template: str = "auto",
                       max_length: int | None = None) -> Example:
    """The response tokens carry the loss; the prompt's (and the chat template's) do not. A too long
    sequence keeps its end (the response), cut from the left of the prompt."""
    p, r = split_prompt(tokenizer, prompt, response, use_chat_template(tokenizer, chat_template))
    ids, labels = p + r, [IGNORE] * len(p) + r
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[-max_length:], labels[-max_length:]
    return Example(ids, labels)


def letter_index(answer, n: int) -> int:
    """An answer given as an index (0-based), a digit string or a letter ("A" / "b")."""
    if isinstance(answer, bool):
        raise ValueError(f"answer {answer!r} is neither an index nor a letter")
    if isinstance(answer, int):
        idx = answer
    elif isinstance(answer, str) and answer.strip().isdigit():
        idx = int(answer.strip())
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        idx = ord(answer.strip().upper()) - ord("A")
    else:
        raise ValueError(f"answer {answer!r} is neither an index nor a letter")
    if not 0 <= idx < n:
        raise ValueError(f"answer {answer!r} is out of range for {n} choices")
    return idx


def encode_question(tokenizer, question: str, choices: Sequence[str], answer, chat_template: str = "auto") -> Question:
    """Each choice is scored as the continuation of the question (" " + choice without a chat
    template, the assistant's reply with one)."""
    if isinstance(choices, str) or not isinstance(choices, Sequence) or len(choices) < 2:
        raise ValueError(f"choices must be a list of at least 2 strings, got {choices!r}")
    chat = use_chat_template(tokenizer, chat_template)
    prompt_ids, conts = None, []
    for choice in choices:
        p, c = split_prompt(tokenizer, question, str(choice) if chat else " " + str(choice), chat)
        if prompt_ids is not None and p != prompt_ids:
            raise ValueError("the prompt's tokens depend on the choice")
        prompt_ids = p
        conts.append(c)
    return Question(prompt_ids, conts, letter_index(answer, len(choices)))


def question_example(q: Question) -> Example:
    """A question trained as prompt -> the right answer."""
    cont = q.choice_ids[q.answer]
    return Example(q.prompt_ids + cont, [IGNORE] * len(q.prompt_ids) + cont)


def collate(examples: Sequence[Example], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (IGNORE on padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def supervised_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) at exactly the positions whose next token carries a label: position t
    predicts labels[t + 1]. Only those rows of the vocabulary projection are computed."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    targets = labels[:, 1:][keep[:, :-1]]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    if logits.dim() != 2 or logits.shape[0] != targets.numel():  # a model without boolean logits_to_keep
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[keep]
    return logits, targets


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross entropy over the labelled tokens (HF's causal-LM loss), in float32."""
    logits, targets = supervised_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return F.cross_entropy(logits.float(), targets)


def _batches(n: int, batch_size: int, progress: str | None):
    """Batch starts, with a tqdm bar named `progress` (None: no bar)."""
    starts = range(0, n, batch_size)
    if progress is None:
        return starts
    from tqdm import tqdm

    return tqdm(starts, desc=progress, ncols=90, leave=False)


@torch.no_grad()
def choice_logprobs(model: nn.Module, questions: Sequence[Question], pad_id: int, batch_size: int = 16,
                    device=None, progress: str | None = None) -> list[list[tuple[float, int]]]:
    """Per question, per choice: (sum of the continuation's token log-probabilities, its length)."""
    seqs = [(qi, ci, Example(q.prompt_ids + c, [IGNORE] * len(q.prompt_ids) + c))
            for qi, q in enumerate(questions) for ci, c in enumerate(q.choice_ids)]
    seqs.sort(key=lambda s: len(s[2].input_ids))  # similar lengths together: less padding
    out = [[None] * len(q.choice_ids) for q in questions]
    for start in _batches(len(seqs), batch_size, progress):
        chunk = seqs[start:start + batch_size]
        batch = collate([s[2] for s in chunk], pad_id, device)
        logits, targets = supervised_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        token_lp = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]).squeeze(1).cpu()
        counts = [sum(1 for t in s[2].labels if t != IGNORE) for s in chunk]
        for (qi, ci, _), piece, n in zip(chunk, token_lp.split(counts), counts):
            out[qi][ci] = (float(piece.sum()), n)
    return out


def score_choices(model: nn.Module, questions: Sequence[Question], pad_id: int, batch_size: int = 16,
                  device=None, progress: str | None = None) -> dict[str, float]:
    """Accuracy by the summed log-likelihood of each choice (`accuracy`) and by its per-token mean
    (`accuracy_per_token`), and the mean negative log-likelihood of the right answer per token
    (`answer_loss`)."""
    lps = choice_logprobs(model, questions, pad_id, batch_size, device, progress)
    hit = hit_norm = 0
    nll, tokens = 0.0, 0
    for q, choices in zip(questions, lps):
        total = [s for s, _ in choices]
        per_token = [s / n for s, n in choices]
        hit += int(max(range(len(total)), key=total.__getitem__) == q.answer)
        hit_norm += int(max(range(len(per_token)), key=per_token.__getitem__) == q.answer)
        s, n = choices[q.answer]
        nll, tokens = nll - s, tokens + n
    return {"accuracy": hit / len(questions), "accuracy_per_token": hit_norm / len(questions),
            "answer_loss": nll / max(tokens, 1)}


@torch.no_grad()
def mean_loss(model: nn.Module, examples: Iterable[Example], pad_id: int, batch_size: int = 16, device=None,
              progress: str | None = None) -> float:
    """The held-out loss: next-token cross entropy over all labelled tokens of `examples`."""
    examples = sorted(examples, key=lambda e: len(e.input_ids))
    total, count = 0.0, 0
    for start in _batches(len(examples), batch_size, progress):
        batch = collate(examples[start:start + batch_size], pad_id, device)
        logits, targets = supervised_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        count += targets.numel()
    return total / max(count, 1)
