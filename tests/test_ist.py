"""IST controller on tiny config-built transformers with peft LoRA (non-zero B)."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from winnow.ist import ISTController  # noqa: E402
from winnow.optim import MaskedAdamW  # noqa: E402


def tiny_bert_lora(layers=4):
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg)
    return peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False))


def tiny_llama_lora(layers=4):
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    return peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


IDS = torch.randint(0, 60, (2, 9), generator=torch.Generator().manual_seed(0))


def out(model):
    o = model(input_ids=IDS)
    return o.last_hidden_state if hasattr(o, "last_hidden_state") else o.logits


@pytest.mark.parametrize("make", [tiny_bert_lora, tiny_llama_lora])
def test_inactive_adapters_get_no_grad_and_stay_bit_identical(make):
    model = make()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = MaskedAdamW(params, lr=1e-2, weight_decay=0.5)
    ctl = ISTController(model, update_ratio=0.25, seed=1, optimizer=opt)
    for step in range(6):
        active = ctl.begin_step(step)
        assert len(active) == 1 == len(ctl.active_layers)
        before = [[p.detach().clone() for p in ps] for ps in ctl.layer_params]
        opt.zero_grad()
        out(model).pow(2).mean().backward()
        opt.step()
        for i, (ps, olds) in enumerate(zip(ctl.layer_params, before)):
            for p, old in zip(ps, olds):
                if i in active:
                    assert not torch.equal(p, old)
                else:
                    assert p.grad is None and torch.equal(p, old)


def test_selection_frequencies_follow_sigmoid_of_minus_scores():
    model = tiny_bert_lora()
    ctl = ISTController(model, update_ratio=0.25, seed=0)  # one layer per step: a single weighted draw
    ctl.scores = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    n = 4000
    counts = torch.zeros(4)
    for _ in range(n):
        counts[ctl.sample_layers()[0]] += 1
    w = torch.sigmoid(-ctl.scores)
    expected = n * w / w.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_same_seed_same_sequence_and_resume():
    a = ISTController(tiny_bert_lora(), seed=7)
    b = ISTController(tiny_bert_lora(), seed=7)
    seq_a = [a.begin_step(s) for s in range(5)]
    assert seq_a == [b.begin_step(s) for s in range(5)]
    sd = a.state_dict()
    more_a = [a.begin_step(s) for s in range(5, 9)]
    c = ISTController(tiny_bert_lora(), seed=123)
    c.load_state_dict(sd)
    assert [c.begin_step(s) for s in range(5, 9)] == more_a


def test_suppression_body_runs_without_grad_and_restores_on_error():
    model = tiny_bert_lora()
    model.eval()
    ctl = ISTController(model)
    base = out(model).detach().clone()
    with ctl.suppress([0, 1], 0.5):
        assert not torch.is_grad_enabled()  # the probe forward builds no graph
        assert not out(model).requires_grad
    assert torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        with ctl.suppress([0, 1, 2, 3], 0.0):
            raise RuntimeError("boom")
    assert torch.equal(out(model).detach(), base)  # the scalings came back despite the error


def test_suppression_identity_zero_and_exact_restore():
    model = tiny_bert_lora()
    model.eval()
    ctl = ISTController(model)
    base = out(model).detach().clone()
    with torch.no_grad():
        with ctl.suppress([0, 1, 2, 3], 1.0):
            assert torch.equal(out(model), base)
        with ctl.suppress([0, 1, 2, 3], 0.0):
            zero = out(model)
        with model.disable_adapter():
            plain = out(model)
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-6)
    assert torch.equal(out(model).detach(), base)  # exact restore
    model.train()
    ctl.update_scores(lambda: out(model).pow(2).mean())  # probes run in eval mode, then train mode is back
    assert model.training
    model.eval()
    assert torch.equal(out(model).detach(), base)


def test_probes_restore_every_modules_own_mode():
    """A pretrained model loads in eval mode inside a peft wrapper that is in train mode; a probe
    must not switch the inner dropout on (model.train() on the wrapper would)."""
    model = tiny_bert_lora()
    model.train()
    model.base_model.model.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    assert any(modes.values()) and not all(modes.values())
    ctl = ISTController(model, update_ratio=0.25, seed=0)
    ctl.update_scores(lambda: out(model).pow(2).mean())
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_score_update_matches_the_formula_on_mocked_losses():
    model = tiny_bert_lora()
    ctl = ISTController(model, n_rollouts=3, score_lr=10.0, seed=3)
    ctl.scores = torch.tensor([0.5, -0.2, 0.0, 1.0], dtype=torch.float64)
    p = torch.sigmoid(ctl.scores.clone())
    losses = iter([0.3, 1.2, 0.7])
    gen = torch.Generator().set_state(ctl.generator.get_state())
    sets = [torch.multinomial(p, 2, replacement=False, generator=gen) for _ in range(3)]
    before = ctl.scores.clone()
    ctl.update_scores(lambda: next(losses))
    r = torch.tensor([math.exp(-x) for x in (0.3, 1.2, 0.7)], dtype=torch.float64)
    adv = r - r.mean()
    want = before.clone()
    for a, s in zip(adv, sets):
        want[s] += 10.0 * a * p[s] * (1 - p[s])
    torch.testing.assert_close(ctl.scores, want, rtol=1e-12, atol=1e-12)


def test_update_ratio_one_without_probes_equals_plain_lora_training():
    a, b = tiny_bert_lora(), tiny_bert_lora()
    opt_a = torch.optim.AdamW([p for p in a.parameters() if p.requires_grad], lr=1e-2)
    opt_b = torch.optim.AdamW([p for p in b.parameters() if p.requires_grad], lr=1e-2)
    ctl = ISTController(b, update_ratio=1.0)
    for step in range(4):
        ctl.begin_step(step)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            out(model).pow(2).mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_drop_policy_frees_optimizer_state_of_inactive_layers():
    model = tiny_bert_lora()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = MaskedAdamW(params, lr=1e-2, block_size="tensor", state_policy="drop")
    ctl = ISTController(model, update_ratio=0.25, optimizer=opt, state_policy="drop", seed=0)
    for step in range(4):
        ctl.begin_step(step)
        opt.zero_grad()
        out(model).pow(2).mean().backward()
        opt.step()
    active = [p for i in ctl.active_layers for p in ctl.layer_params[i]]
    assert opt.state_bytes() <= sum(8 * p.numel() + 12 for p in active)  # only the active layer holds state
    inactive = [p for i, ps in enumerate(ctl.layer_params) if i not in ctl.active_layers for p in ps]
    assert all(opt.state[p]["active_blocks"].numel() == 0 for p in inactive if p in opt.state)


def test_bad_config_and_missing_params():
    model = tiny_bert_lora()
    with pytest.raises(ValueError, match="update_ratio must be in"):
        ISTController(model, update_ratio=0)
    with pytest.raises(ValueError, match="no layer list found"):
        ISTController(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not hold"):
        ISTController(model, optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
