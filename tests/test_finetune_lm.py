"""`winnow finetune --task causal-lm` end to end on a tiny Llama folder (word-level tokenizer with a
chat template): multiple choice and instruction pairs, every method, the artifacts of --output-dir
reloading to the same numbers, and bad input refused in one line before anything is written."""
import json
import random

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm_fixtures import decoder, tokenizer  # noqa: E402

from winnow import causal_lm as clm  # noqa: E402
from winnow import cli  # noqa: E402

FACTS = {"sky": "blue", "grass": "green", "fire": "red", "ice": "cold", "sun": "hot"}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny Llama folder and two data files: multiple choice (JSONL) and instruction pairs (CSV)."""
    root = tmp_path_factory.mktemp("lm")
    decoder("llama").save_pretrained(root / "model")
    tokenizer(chat=True).save_pretrained(root / "model")
    rng = random.Random(0)
    mc, pairs = [], ["prompt,response"]
    for i in range(160):
        thing = rng.choice(list(FACTS))
        wrong = rng.choice([v for k, v in FACTS.items() if k != thing])
        choices = [FACTS[thing], wrong] if i % 2 else [wrong, FACTS[thing]]
        mc.append({"question": f"what colour is the {thing} ?", "choices": choices, "answer": "AB"[1 - i % 2]})
        pairs.append(f"what colour is the {thing} ?,{FACTS[thing]}")
    (root / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in mc) + "\n")
    (root / "pairs.csv").write_text("\n".join(pairs) + "\n")
    return root


def run(tiny_lm, tmp_path, *extra):
    out = tmp_path / "out"
    length = [] if "--epochs" in extra else ["--steps", "30"]
    rc = cli.main(["finetune", "--model", str(tiny_lm / "model"), *length, "--batch-size", "8",
                   "--rank", "4", "--test-size", "40", "--val-size", "20", "--quiet", "--device", "cpu",
                   "--precision", "fp32", "--lr-lora", "2e-2", "--lr-ist", "2e-2", "--lr-adalora", "5e-2",
                   "--lr-id3", "2e-2", "--lr-full", "2e-3", "--output-dir", str(out), *extra])
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_every_method_learns_a_multiple_choice_task_and_its_artifacts_reload(tiny_lm, tmp_path):
    import peft
    import transformers

    out, result = run(tiny_lm, tmp_path, "--data", str(tiny_lm / "mc.jsonl"), "--methods", "lora", "ist",
                      "adalora", "id3", "full")
    rows = {r["method"]: r for r in result["rows"]}
    assert result["settings"]["task"] == "causal-lm"  # detected from the config
    for method, r in rows.items():
        assert r["test acc"] >= 0.75, (method, r)  # chance is 0.5
        assert r["trainable params"] > 0 and r["peak train MB"] > 0
    # each artifact reloads the way users reload it, and gives the reported test accuracy
    from winnow.demo.finetune import parser, resolve
    from winnow.demo.lm_task import CausalLMTask

    ap = parser()
    args = ap.parse_args(["--model", str(tiny_lm / "model"), "--data", str(tiny_lm / "mc.jsonl"), "--test-size", "40",
                          "--val-size", "20", "--device", "cpu", "--precision", "fp32"])
    resolve(args, ap)
    task = CausalLMTask(args)

    def base():
        return transformers.AutoModelForCausalLM.from_pretrained(tiny_lm / "model")

    reloaded = {
        "lora": peft.PeftModel.from_pretrained(base(), out / "lora"),
        "lora+ist": peft.PeftModel.from_pretrained(base(), out / "ist"),
        "adalora": peft.PeftModel.from_pretrained(base(), out / "adalora"),
        "full": transformers.AutoModelForCausalLM.from_pretrained(out / "full"),
    }
    import winnow

    id3_model = base()
    winnow.apply_sparse(id3_model, str(out / "id3" / "id3_delta.safetensors"))
    reloaded["id3"] = id3_model
    for method, model in reloaded.items():
        got = task.evaluate(model.eval(), "cpu")
        assert got["test acc"] == rows[method]["test acc"], method
        assert abs(got["test loss"] - rows[method]["test loss"]) < 1e-4, method


@pytest.mark.slow
def test_gradient_checkpointing_changes_no_result(tiny_lm, tmp_path):
    """Every method, IST's resting layers included, trains to the same numbers with checkpointing
    (its memory saving shows on real sizes, not on a 2-layer model of 15-token sequences)."""
    methods = ["lora", "ist", "adalora", "id3", "full"]
    _, plain = run(tiny_lm, tmp_path / "plain", "--data", str(tiny_lm / "mc.jsonl"), "--methods", *methods)
    _, ckpt = run(tiny_lm, tmp_path / "ckpt", "--data", str(tiny_lm / "mc.jsonl"), "--methods", *methods,
                  "--gradient-checkpointing")
    for a, b in zip(plain["rows"], ckpt["rows"]):
        assert a["method"] == b["method"]
        assert abs(a["test loss"] - b["test loss"]) < 1e-4 and a["test acc"] == b["test acc"], (a, b)


@pytest.mark.parametrize("kind", ["causal-lm", "classification"])
def test_gradient_checkpointing_really_checkpoints(tiny_lm, tiny_text_task, kind):
    """The loop trains in eval mode, and transformers checkpoints a layer only while the layer's
    training flag is set: with --gradient-checkpointing far fewer activations must be saved for
    backward (before the fix: exactly as many), and dropout must stay off."""
    from winnow.demo import finetune
    from winnow.demo.lm_task import CausalLMTask
    from winnow.memory import TrainingMemory

    if kind == "causal-lm":
        data = ["--model", str(tiny_lm / "model"), "--data", str(tiny_lm / "mc.jsonl")]
    else:
        data = ["--model", str(tiny_text_task[0]), "--data", str(tiny_text_task[1]), "--text-column", "review",
                "--label-column", "stars"]
    saved = {}
    for checkpointing in (False, True):
        ap = finetune.parser()
        args = ap.parse_args([*data, "--steps", "2", "--batch-size", "8", "--test-size", "20", "--val-size", "20",
                              "--precision", "fp32", "--device", "cpu", "--quiet"]
                             + (["--gradient-checkpointing"] if checkpointing else []))
        finetune.resolve(args, ap)
        finetune.check_protocol(args, ap)
        task = CausalLMTask(args) if kind == "causal-lm" else finetune.ClassifierTask(args)
        m = finetune.build_method("lora", task, args)
        memory = TrainingMemory(m.model, m.opts)
        for _ in finetune.training_steps(m, task, args, memory):
            saved.setdefault(checkpointing, []).append(len(memory._saved))
        assert not any(mod.training for mod in m.model.modules() if isinstance(mod, torch.nn.Dropout))
    assert max(saved[True]) < 0.5 * min(saved[False]), saved


@pytest.mark.slow
def test_instruction_pairs_train_on_the_response_and_report_held_out_loss(tiny_lm, tmp_path):
    _, result = run(tiny_lm, tmp_path, "--data", str(tiny_lm / "pairs.csv"), "--methods", "lora", "--epochs", "2")
    (row,) = result["rows"]
    assert set(row) >= {"val loss", "test loss"} and "test acc" not in row
    model = decoder("llama")  # the untrained model: the held-out loss went down from it
    tok = tokenizer(chat=True)
    rows = [line.split(",") for line in (tiny_lm / "pairs.csv").read_text().splitlines()[1:]]
    before = clm.mean_loss(model, [clm.encode_instruction(tok, p, r) for p, r in rows[:40]], tok.pad_token_id)
    assert row["test loss"] < 0.5 * before


@pytest.mark.parametrize("args, message", [
    (["--data", "MISSING"], "no such file"),
    (["--data", "EMPTY"], "the file is empty"),
    (["--data", "MC", "--answer-column", "nope"], "--answer-column 'nope'"),
    (["--data", "BAD_ANSWER"], "row 2: answer 'C' is out of range for 2 choices"),
    (["--data", "BAD_CHOICES"], "row 1: choices must be a list"),
    (["--data", "PAIRS", "--response-column", "reply"], "--response-column 'reply'"),
    (["--device", "cuda"], "--device cuda: no CUDA device"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_lm, tmp_path, capsys, args, message):
    if args[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    files = {"MISSING": tmp_path / "missing.jsonl", "EMPTY": tmp_path / "empty.jsonl", "MC": tiny_lm / "mc.jsonl",
             "PAIRS": tiny_lm / "pairs.csv", "BAD_ANSWER": tmp_path / "bad_answer.jsonl",
             "BAD_CHOICES": tmp_path / "bad_choices.jsonl"}
    files["EMPTY"].write_text("")
    files["BAD_ANSWER"].write_text('{"question": "q", "choices": ["a", "b"], "answer": "A"}\n'
                                   '{"question": "q", "choices": ["a", "b"], "answer": "C"}\n')
    files["BAD_CHOICES"].write_text('{"question": "q", "choices": "a or b", "answer": 0}\n')
    args = [str(files.get(a, a)) for a in args]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", "--task", "causal-lm", "--model", str(tiny_lm / "model"), "--steps", "1", "--quiet",
                  "--test-size", "2", "--val-size", "2", "--output-dir", str(out), *args])
    said = (str(e.value.code) if not isinstance(e.value.code, int) else "") + capsys.readouterr().err
    assert message in said
    assert not out.exists()


def test_a_classifier_folder_is_refused_for_causal_lm(tmp_path):
    import transformers

    cfg = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert")
    tokenizer().save_pretrained(tmp_path / "bert")
    (tmp_path / "d.csv").write_text("prompt,response\n" + "a,b\n" * 10)
    with pytest.raises(SystemExit, match="names no \\*ForCausalLM architecture"):
        cli.main(["finetune", "--task", "causal-lm", "--model", str(tmp_path / "bert"), "--data",
                  str(tmp_path / "d.csv"), "--steps", "1", "--quiet", "--test-size", "2", "--val-size", "2"])


def test_lora_on_every_device(tiny_lm, tmp_path, device):
    """--device cuda runs the same path (bf16 autocast there) where a GPU is present."""
    out = tmp_path / "out"
    assert cli.main(["finetune", "--model", str(tiny_lm / "model"), "--data", str(tiny_lm / "mc.jsonl"),
                     "--methods", "lora", "--steps", "20", "--batch-size", "8", "--rank", "4", "--test-size", "40",
                     "--val-size", "20", "--quiet", "--device", device.type, "--lr-lora", "2e-2",
                     "--output-dir", str(out)]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["device"] == device.type and row["test acc"] >= 0.75 and row["peak train MB"] > 0


@pytest.mark.parametrize("checkpointing", [False, True])
def test_ist_decoder_memory_benchmark_runs_the_demo_loop(tiny_lm, checkpointing):
    """benchmarks.ist_decoder measures the demo's own training loop; on a tiny decoder IST (a
    quarter of the layers: here 1 of 2) holds fewer gradients and saved activations than LoRA."""
    from benchmarks import ist_decoder

    argv = ["--model", str(tiny_lm / "model"), "--data", str(tiny_lm / "mc.jsonl"), "--batch-size", "8",
            "--precision", "fp32"]
    lora = ist_decoder.measure("lora", "keep", checkpointing, "cpu", 3, argv)
    ist = ist_decoder.measure("ist", "drop", checkpointing, "cpu", 3, argv)
    assert lora["peak MB"] >= 0 and lora["saved+grads+state MB"] > 0
    assert ist["saved+grads+state MB"] < lora["saved+grads+state MB"]
    # the live-tensor peak (the profiler's allocation events): the step's tensors are in it
    allocated = ist_decoder.measure("lora", "keep", checkpointing, "cpu", 3, argv, allocated=True)
    assert allocated["peak MB"] > 0
