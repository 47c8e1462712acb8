"""winnow.causal_lm on tiny Llama and GPT-2 decoders: labels, the loss against a hand
computation from full logits, the logits_to_keep path, multiple-choice scoring, bad input."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from llm_fixtures import decoder, tokenizer  # noqa: E402

from winnow import causal_lm as clm  # noqa: E402

KINDS = ["llama", "gpt2"]


def hand_loss(model, batch):
    """Mean cross entropy of labels[t+1] under the full logits at t, over labelled targets."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            y = int(batch["labels"][b, t + 1])
            if y != clm.IGNORE:
                total -= float(torch.log_softmax(logits[b, t].double(), -1)[y])
                count += 1
    return total / count


def test_target_modules_by_architecture(tmp_path):
    import transformers

    assert clm.target_modules(decoder("llama")) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"])
    assert clm.target_modules(decoder("gpt2")) == ["c_attn", "c_fc", "c_proj"]
    for kind in KINDS:  # a saved folder's config names its architecture
        decoder(kind).save_pretrained(tmp_path / kind)
        assert clm.is_causal_lm(transformers.AutoConfig.from_pretrained(tmp_path / kind))
    assert not clm.is_causal_lm(transformers.BertConfig(architectures=["BertForSequenceClassification"]))
    with pytest.raises(ValueError, match="none of the linear layers"):
        clm.target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("chat", [False, True])
def test_prompt_tokens_carry_no_loss(chat):
    tok = tokenizer(chat)
    e = clm.encode_instruction(tok, "what colour is the sky ?", "blue", "auto")
    n_prompt = sum(1 for y in e.labels if y == clm.IGNORE)
    prompt_text = tok.decode(e.input_ids[:n_prompt])
    assert "sky" in prompt_text and "blue" not in prompt_text
    answer = [t for t in e.labels if t != clm.IGNORE]
    assert answer[0] == tok.convert_tokens_to_ids("blue") and answer == e.input_ids[n_prompt:]
    assert (answer[-1] == tok.convert_tokens_to_ids("<end>")) if chat else (answer[-1] == tok.eos_token_id)
    assert ("<assistant>" in prompt_text) == chat


@pytest.mark.parametrize("kind", KINDS)
def test_loss_equals_a_hand_computation_and_the_full_logits_path(kind):
    model, tok = decoder(kind), tokenizer()
    examples = [clm.encode_instruction(tok, p, r) for p, r in [("what colour is the sky ?", "blue"),
                                                                ("what colour is fire ?", "red hot"),
                                                                ("the grass is", "green")]]
    batch = clm.collate(examples, tok.pad_token_id)
    with torch.no_grad():
        ours = float(clm.lm_loss(model, batch))
        full = float(model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=batch["labels"]).loss)
    assert abs(ours - hand_loss(model, batch)) < 1e-6
    assert abs(ours - full) < 1e-6  # transformers' own loss on every position's logits
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape))
    logits, targets = clm.supervised_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    hook.remove()
    labelled = int((batch["labels"] != clm.IGNORE).sum())
    assert logits.shape == (labelled, model.config.vocab_size)
    assert rows == [torch.Size([labelled, model.config.hidden_size])]  # the head saw only those positions
    assert abs(clm.mean_loss(model, examples, tok.pad_token_id, batch_size=2) - ours) < 1e-6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chat", [False, True])
def test_choice_scores_equal_a_hand_computation(kind, chat):
    model, tok = decoder(kind), tokenizer(chat)
    q = clm.encode_question(tok, "what colour is the sky ?", ["blue", "red hot", "green"], "B")
    assert q.answer == 1
    got = clm.choice_logprobs(model, [q], tok.pad_token_id)[0]
    for (s, n), cont in zip(got, q.choice_ids):
        ids = torch.tensor([q.prompt_ids + cont])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        want = sum(float(lp[len(q.prompt_ids) - 1 + j, t]) for j, t in enumerate(cont))
        assert n == len(cont) and abs(s - want) < 1e-5
    scores = clm.score_choices(model, [q], tok.pad_token_id)
    best = max(range(3), key=lambda i: got[i][0])
    assert scores["accuracy"] == float(best == 1)
    assert abs(scores["answer_loss"] + got[1][0] / got[1][1]) < 1e-6


def test_answers_as_index_or_letter_and_bad_questions():
    assert [clm.letter_index(a, 3) for a in (0, "2", "a", "C", " b ")] == [0, 2, 0, 2, 1]
    with pytest.raises(ValueError, match="out of range"):
        clm.letter_index("D", 3)
    with pytest.raises(ValueError, match="out of range"):
        clm.letter_index(3, 3)
    with pytest.raises(ValueError, match="neither an index nor a letter"):
        clm.letter_index("blue", 3)
    with pytest.raises(ValueError, match="choices must be a list"):
        clm.encode_question(tokenizer(), "what ?", "blue", 0)
    with pytest.raises(ValueError, match="chat_template must be"):
        clm.encode_instruction(tokenizer(), "a", "b", chat_template="yes")


def test_long_sequences_keep_their_answer():
    tok = tokenizer()
    e = clm.encode_instruction(tok, " ".join(["the sky is blue"] * 10), "green", max_length=8)
    assert len(e.input_ids) == 8 and e.labels[-2:] == [tok.convert_tokens_to_ids("green"), tok.eos_token_id]
