"""AdaLoRACallback in a real transformers Trainer (CPU, a few steps, gradient accumulation)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from winnow.adalora import AdaLoRA  # noqa: E402
from winnow.integrations.hf import AdaLoRACallback  # noqa: E402


class Tiny(torch.utils.data.Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 100, (n, 12), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


def tiny_bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def test_trainer_calls_update_and_allocate_per_optimizer_step(tmp_path):
    model = tiny_bert()
    ada = AdaLoRA(model, ["query", "value"], init_r=4, target_r=2, total_step=1000, tinit=1, tfinal=1, deltaT=1)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    cb = AdaLoRACallback(ada)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=100, save_strategy="no",
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tiny(), callbacks=[cb])
    trainer.train()
    assert cb.steps_seen == [0, 1, 2, 3, 4]  # once per optimizer step, not per micro-batch
    assert ada.config.total_step == 5  # taken from the Trainer
    assert sum(ada.ranks().values()) == 2 * 2 * 2  # target_r x 2 targets x 2 layers after the final step


def test_orth_reg_is_added_to_model_loss():
    model = tiny_bert().eval()  # no dropout: two forwards give the same task loss
    ada = AdaLoRA(model, ["query"], init_r=4, target_r=2, total_step=10)
    batch = Tiny()[0]
    batch = {k: v.unsqueeze(0) for k, v in batch.items()}
    with_reg = model(**batch).loss
    ada.config.orth_reg_weight = 0.0
    without = model(**batch).loss
    ada.config.orth_reg_weight = 0.5
    assert ada.orth_reg_loss() > 0
    torch.testing.assert_close(with_reg, without + ada.orth_reg_loss())


def test_orth_reg_left_to_the_caller_is_not_added_to_model_loss():
    """A loss computed outside the model's forward (the causal-LM loss) adds orth_reg_loss()
    itself: the model's own .loss must then stay the bare task loss, or it would count twice."""
    batch = {k: v.unsqueeze(0) for k, v in Tiny()[0].items()}
    torch.manual_seed(0)
    hooked = tiny_bert().eval()
    AdaLoRA(hooked, ["query"], init_r=4, target_r=2, total_step=10)
    torch.manual_seed(0)
    model = tiny_bert().eval()
    ada = AdaLoRA(model, ["query"], init_r=4, target_r=2, total_step=10, orth_reg_in_output=False)
    model.load_state_dict(hooked.state_dict())
    assert ada.orth_reg_loss() > 0
    torch.testing.assert_close(hooked(**batch).loss, model(**batch).loss + ada.orth_reg_loss())


def test_ist_callback_switches_layers_once_per_optimizer_step(tmp_path):
    peft = pytest.importorskip("peft")
    from winnow.integrations.hf import ISTCallback
    from winnow.ist import ISTController

    model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=2, target_modules=["query", "value"],
                                                               modules_to_save=["classifier"]))
    ctl = ISTController(model, update_ratio=0.5, score_interval=2, seed=0)
    probe_loader = torch.utils.data.DataLoader(Tiny(8), batch_size=4)
    cb = ISTCallback(ctl, probe_loader=probe_loader)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=100, save_strategy="no",
    )
    transformers.Trainer(model=model, args=args, train_dataset=Tiny(), callbacks=[cb]).train()
    steps = [h["step"] for h in ctl.history if "step" in h]
    assert steps == [0, 1, 2, 3, 4]  # once per optimizer step, not per micro-batch
    assert all(len(h["active"]) == 1 for h in ctl.history if "active" in h)
    assert any("rewards" in h for h in ctl.history)  # probes ran at steps 2 and 4
