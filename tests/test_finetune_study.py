"""`winnow finetune --seeds ... --lr-grid ...`: the seeded comparison's protocol (winnow.demo.study):
the learning rate chosen on validation only, mean and sd over seeds, the same data order per seed
for every method, validation curves, resuming, and bad settings refused in one line."""
import json
import statistics

import pytest

from winnow import cli
from winnow.demo import study


def test_choose_takes_the_best_validation_score_and_the_first_of_equals():
    rows = [{"lr": 1, "v": 0.5}, {"lr": 2, "v": 0.7}, {"lr": 3, "v": 0.7}, {"lr": 4, "v": 0.1}]
    assert study.choose(rows, "v", higher_is_better=True)["lr"] == 2
    assert study.choose(rows, "v", higher_is_better=False)["lr"] == 4


def test_summarize_is_mean_and_sample_sd_over_seeds():
    runs = [{"method": "lora", "lr": 1e-3, "seed": s, "acc": a, "ranks": "8 x 2"} for s, a in enumerate([0.5, 0.6, 0.9])]
    row = study.summarize(runs, ["acc", "ranks"])
    assert row["seeds"] == [0, 1, 2] and row["ranks"] == "8 x 2"
    assert row["acc"] == pytest.approx(statistics.fmean([0.5, 0.6, 0.9]))
    assert row["acc sd"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.9]))
    assert study.as_cells(row, ["acc", "ranks"]) == {"acc": "0.667 ± 0.208", "ranks": "8 x 2"}
    assert study.mean_sd(0.771, 0.00918) == "0.771 ± 0.009"
    assert study.mean_sd(137.4, 1.74) == "137 ± 2"
    assert study.mean_sd(12.34, 0.5) == "12.3 ± 0.5"
    assert study.mean_sd(0.78, 0.0077) == "0.780 ± 0.008"


def test_fingerprint_follows_what_defines_a_run():
    from winnow.demo.finetune import parser

    def fp(*argv):
        return study.fingerprint(parser().parse_args(list(argv)))

    base = fp("--steps", "10")
    assert base == fp("--steps", "10", "--seed", "3", "--output-dir", "x", "--lr-lora", "1", "--quiet")
    assert base != fp("--steps", "11")
    assert base != fp("--steps", "10", "--ist-update-ratio", "0.5")


def test_run_store_keeps_rows_for_their_own_settings_only(tmp_path):
    study.RunStore(tmp_path, "abc").put("lora", 1e-3, 0, {"acc": 0.5})
    assert study.RunStore(tmp_path, "abc").get("lora", 1e-3, 0) == {"acc": 0.5}
    assert study.RunStore(tmp_path, "abc").get("lora", 1e-3, 1) is None
    assert study.RunStore(tmp_path, "other").get("lora", 1e-3, 0) is None
    assert study.RunStore(None, "abc").get("lora", 1e-3, 0) is None
    study.RunStore(tmp_path, "other").put("lora", 1e-3, 0, {"acc": 0.7})  # an ablation in the same folder
    assert study.RunStore(tmp_path, "abc").get("lora", 1e-3, 0) == {"acc": 0.5}
    assert study.RunStore(tmp_path, "other").get("lora", 1e-3, 0) == {"acc": 0.7}


def test_every_method_sees_the_same_batches_for_a_seed(tiny_text_task):
    from winnow.demo.finetune import ClassifierTask, parser, resolve

    model_dir, csv = tiny_text_task
    ap = parser()
    args = ap.parse_args(["--model", str(model_dir), "--data", str(csv), "--text-column", "review",
                          "--label-column", "stars", "--test-size", "20", "--val-size", "20", "--epochs", "1",
                          "--batch-size", "8"])
    resolve(args, ap)
    task = ClassifierTask(args)

    def order(epoch, seed):
        return [b["input_ids"].tolist() for b in task.train_batches(epoch, seed)]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    assert order(1, 1) != order(0, 2)  # seed 1's second epoch is not seed 2's first


def _finetune(tiny_text_task, tmp_path, *extra):
    model_dir, csv = tiny_text_task
    return cli.main(["finetune", "--model", str(model_dir), "--data", str(csv), "--text-column", "review",
                     "--label-column", "stars", "--steps", "6", "--batch-size", "8", "--rank", "2",
                     "--test-size", "20", "--val-size", "20", "--quiet", "--precision", "fp32", *extra])


@pytest.mark.slow
def test_seeds_and_grid_choose_on_validation_and_report_mean_and_sd(tiny_text_task, tmp_path, monkeypatch):
    from winnow.demo import finetune

    out = tmp_path / "out"
    argv = ["--methods", "lora", "id3", "--seeds", "0", "1", "--lr-grid", "0.5", "4", "--lr-lora", "1e-2",
            "--lr-id3", "1e-2", "--val-every", "3", "--output-dir", str(out), "--resume", "--json",
            str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]
    assert _finetune(tiny_text_task, tmp_path, *argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert "validation split" in result["protocol"]
    runs = {(r["method"], r["seed"]): r for r in result["runs"]}
    assert sorted(runs) == [("id3", 0), ("id3", 1), ("lora", 0), ("lora", 1)]
    for method, grid in result["lr grid"].items():
        assert [g["lr"] for g in grid] == pytest.approx([0.5e-2, 4e-2])
        assert sum(g["chosen"] for g in grid) == 1
        chosen = next(g for g in grid if g["chosen"])
        assert chosen["val acc"] == max(g["val acc"] for g in grid)  # chosen on validation, first of equals
        assert chosen == next(g for g in grid if g["val acc"] == chosen["val acc"])
        label = finetune.METHOD_LABELS[method]
        assert runs[(label, 0)]["lr"] == runs[(label, 1)]["lr"] == chosen["lr"]  # every seed at that rate
    for row in result["rows"]:
        mine = [runs[(row["method"], s)] for s in (0, 1)]
        assert row["test acc"] == pytest.approx(statistics.fmean(r["test acc"] for r in mine))
        assert row["test acc sd"] == pytest.approx(statistics.stdev(r["test acc"] for r in mine))
        for r in mine:  # the curve every 3 steps, its last point the run's final validation
            assert [p["step"] for p in r["val curve"]] == [3, 6]
            assert r["val curve"][-1]["val acc"] == r["val acc"]
    # the chosen run's artifacts where each seed's result belongs; the grid's others are gone
    for seed in (0, 1):
        assert (out / f"seed{seed}" / "lora" / "adapter_config.json").is_file()
        assert (out / f"seed{seed}" / "id3" / "id3_delta.safetensors").is_file()
    assert not (out / "grid").exists()
    assert (tmp_path / "r.png").stat().st_size > 0
    assert len(list((out / "runs").glob("*.json"))) == 2 * 2 + 2  # 2 methods x (2 grid rates + 1 more seed)

    def no_training(*_, **__):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(finetune, "run_method", no_training)
    assert _finetune(tiny_text_task, tmp_path, *argv) == 0  # resumed: every run from OUTPUT_DIR/runs
    assert json.loads((out / "results.json").read_text())["rows"] == result["rows"]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0", "0"], "--seeds"),
    (["--lr-grid", "0", "1"], "--lr-grid"),
    (["--val-every", "0"], "--val-every"),
    (["--resume"], "--resume needs --output-dir"),
    (["--ist-update-ratio", "1.5"], "--ist-update-ratio"),
    (["--adalora-tinit", "0.5", "--adalora-tfinal", "0.5"], "--adalora-tinit"),
])
def test_bad_protocol_settings_are_refused_in_one_line(tiny_text_task, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        _finetune(tiny_text_task, tmp_path, *argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
