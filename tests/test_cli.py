"""The `winnow` command end to end on tiny local data: a text CSV with a tiny HF model folder
(finetune, every method), an image folder with a torchvision-style model (prune), the benchmark
suite's quick mode and the report writer."""
import json
import subprocess
import sys

import pytest
import torch

from winnow import cli


def test_help_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "winnow finetune" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-c", "from importlib.metadata import entry_points; "
                          "print([e.value for e in entry_points(group='console_scripts', name='winnow')])"],
                         capture_output=True, text=True, check=True).stdout
    assert "winnow.cli:main" in out


@pytest.mark.slow
def test_finetune_any_hf_folder_and_csv(tiny_text_task, tmp_path):
    model_dir, csv = tiny_text_task
    out = tmp_path / "ft.json"
    rc = cli.main(["finetune", "--model", str(model_dir), "--data", str(csv), "--text-column", "review",
                   "--label-column", "stars", "--methods", "lora", "ist", "adalora", "id3", "full", "--steps", "6",
                   "--batch-size", "8", "--rank", "2", "--test-size", "20", "--val-size", "20", "--quiet",
                   "--json", str(out), "--plot", str(tmp_path / "ft.png")])
    assert rc == 0
    result = json.loads(out.read_text())
    assert [r["method"] for r in result["rows"]] == ["lora", "lora+ist", "adalora", "id3", "full"]
    for r in result["rows"]:
        assert 0 <= r["test acc"] <= 1 and r["trainable params"] > 0 and r["peak train MB"] > 0
    assert (tmp_path / "ft.png").stat().st_size > 0


@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_finetune_batches_cover_every_example_once_cut_to_their_longest(shuffle_seed):
    from winnow.demo.finetune import batches

    g = torch.Generator().manual_seed(0)
    n, width = 301, 12
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = (torch.arange(width) < lengths[:, None]).long()
    enc = {"input_ids": torch.arange(n)[:, None] * mask, "attention_mask": mask}
    labels = torch.arange(n)
    seen, widths = [], []
    for b in batches(enc, labels, 8, shuffle_seed=shuffle_seed):
        assert b["input_ids"].shape == b["attention_mask"].shape and len(b["labels"]) <= 8
        assert b["input_ids"].shape[1] == int(lengths[b["labels"]].max())  # cut to the longest, no more
        assert torch.equal(b["input_ids"][:, 0], b["labels"])  # rows stay with their labels
        seen += b["labels"].tolist()
        widths.append(b["input_ids"].shape[1])
    assert sorted(seen) == list(range(n))
    if shuffle_seed is None:
        assert widths == sorted(widths)  # evaluation: in order of length
    else:
        assert seen[:50] != sorted(seen[:50])  # training: shuffled
        # length-grouped: far less padding than random batches of the same size
        padded = sum(w * 8 for w in widths)
        assert padded < 0.8 * width * n


@pytest.mark.slow
def test_finetune_precisions_agree(tiny_text_task, tmp_path):
    model_dir, csv = tiny_text_task
    rows = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        assert cli.main(["finetune", "--model", str(model_dir), "--data", str(csv), "--text-column", "review",
                         "--label-column", "stars", "--methods", "full", "--steps", "60", "--batch-size", "8", "--lr-full", "1e-2",
                         "--rank", "2", "--test-size", "40", "--val-size", "20", "--quiet", "--precision", precision,
                         "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["settings"]["precision"] == precision
        rows[precision] = result["rows"][0]
    # bf16 autocast changes the rounding, not the training: both learn the task (chance is 0.5)
    assert rows["fp32"]["test acc"] >= 0.9 and rows["bf16"]["test acc"] >= 0.9


@pytest.mark.slow
def test_ist_benchmark_builds_its_demo_case(tiny_text_task):
    """The IST benchmark reuses the demo's data path: it must keep up with the demo's options."""
    from benchmarks import ist

    model_dir, csv = tiny_text_task
    model, train, probe = ist._case("minilm-tweets", finetune_argv=[
        "--model", str(model_dir), "--data", str(csv), "--text-column", "review", "--label-column", "stars",
        "--test-size", "20", "--val-size", "20"])
    assert model.config.num_labels == 2 and train and probe["input_ids"].shape[0] > 0
    assert model(**train[0]).loss.isfinite()


def test_finetune_bad_csv_columns_are_named(tiny_text_task):
    model_dir, csv = tiny_text_task
    with pytest.raises(SystemExit, match="winnow finetune: .*'text'"):
        cli.main(["finetune", "--model", str(model_dir), "--data", str(csv), "--steps", "1", "--quiet"])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of 12 x 12 RGB images (bright top half vs bright bottom half)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for label in ("top", "bottom"):
        (root / label).mkdir()
        for i in range(24):
            a = (torch.rand(12, 12, 3, generator=g) * 80).to(torch.uint8)
            half = slice(0, 6) if label == "top" else slice(6, 12)
            a[half] += 150
            Image.fromarray(a.numpy()).save(root / label / f"{i}.png")
    return root


@pytest.mark.slow
def test_prune_torchvision_style_model_on_an_image_folder(image_folder, tmp_path):
    pytest.importorskip("torch_pruning")
    out = tmp_path / "prune.json"
    rc = cli.main(["prune", "--model", "nets:tiny_cnn", "--data", str(image_folder), "--image-size", "12",
                   "--methods", "oba", "magnitude", "taylor", "oba-self", "--targets", "0.5", "--epochs", "2",
                   "--finetune-steps", "2", "--batch-size", "8", "--score-batches", "1",
                   "--json", str(out), "--plot", str(tmp_path / "prune.png")])
    assert rc == 0
    result = json.loads(out.read_text())
    assert [r["method"] for r in result["rows"]] == ["oba", "magnitude", "taylor", "oba-self"] \
        == [r["method"] for r in result["runs"]]
    for r in result["rows"]:
        assert r["FLOPs kept"] <= 0.55 and r["params kept"] < 1  # pruned to the target, physically
    assert (tmp_path / "prune.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v3_small"])
def test_prune_torchvision_models_with_every_method(image_folder, tmp_path, model):
    """torchvision's own models as a new user brings them (random weights, in-place ReLUs and
    `out += identity` in ResNet, Hardswish / Hardsigmoid squeeze-excitation in MobileNetV3): every
    method runs but oba-self, whose one product per channel (4,800 on ResNet-18, 10,000 on
    MobileNetV3-small) takes minutes here; it runs end to end on the tiny CNN below."""
    pytest.importorskip("torchvision")
    from winnow.demo.prune import METHODS

    methods = [m for m in METHODS if m != "oba-self"]
    out = tmp_path / "prune.json"
    rc = cli.main(["prune", "--model", f"torchvision.models:{model}", "--data", str(image_folder), "--image-size",
                   "12", "--methods", *methods, "--targets", "0.5", "--epochs", "0.2", "--finetune-steps", "1",
                   "--batch-size", "4", "--score-batches", "1", "--prune-steps", "1", "--quiet",
                   "--json", str(out), "--plot", ""])
    result = json.loads(out.read_text())
    assert rc == 0, [r.get("error") for r in result["runs"]]
    assert [r["method"] for r in result["rows"]] == methods
    for r in result["rows"]:
        assert r["runs"] == "1/1" and r["FLOPs kept"] <= 0.55 and r["params kept"] < 1


@pytest.mark.slow
def test_prune_a_failing_method_keeps_the_finished_runs(image_folder, tmp_path, monkeypatch):
    from winnow.demo import prune

    finished = prune.prune_and_finetune

    def flaky(model, method, *args):
        if method == "taylor":
            raise RuntimeError("out of memory (simulated)")
        return finished(model, method, *args)

    monkeypatch.setattr(prune, "prune_and_finetune", flaky)
    out = tmp_path / "prune.json"
    rc = cli.main(["prune", "--model", "nets:tiny_cnn", "--data", str(image_folder), "--image-size", "12",
                   "--methods", "magnitude", "taylor", "oba-fisher", "--targets", "0.5", "--epochs", "0.5",
                   "--finetune-steps", "1", "--batch-size", "8", "--score-batches", "1", "--quiet",
                   "--json", str(out), "--plot", ""])
    assert rc == 1
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["taylor"]["runs"] == "0/1" and "out of memory (simulated)" in rows["taylor"]["error"]
    for method in ("magnitude", "oba-fisher"):  # run before and after the failure: both kept
        assert rows[method]["runs"] == "1/1" and 0 <= rows[method]["acc fine-tuned"] <= 1


@pytest.mark.slow
def test_prune_resume_runs_only_what_is_missing(image_folder, tmp_path, monkeypatch, capsys):
    """A study in pieces: --resume keeps the finished runs of --json (the failed one is run again),
    retrains the dense model of a seed with runs left, and skips a seed whose runs are all kept."""
    from winnow.demo import prune

    finished, calls, interrupted = prune.prune_and_finetune, [], [True]

    def counting(model, method, target, score_batches, data, args, seed):
        calls.append((seed, method))
        if method == "taylor" and interrupted[0]:
            raise RuntimeError("interrupted (simulated)")
        return finished(model, method, target, score_batches, data, args, seed)

    monkeypatch.setattr(prune, "prune_and_finetune", counting)
    out = tmp_path / "prune.json"
    argv = ["prune", "--model", "nets:tiny_cnn", "--data", str(image_folder), "--image-size", "12", "--targets",
            "0.5", "--epochs", "0.5", "--finetune-steps", "1", "--batch-size", "8", "--score-batches", "1",
            "--seeds", "0", "1", "--quiet", "--json", str(out), "--plot", ""]
    assert cli.main([*argv, "--methods", "magnitude", "taylor"]) == 1  # taylor fails on both seeds
    first = {(r["seed"], r["method"]): r for r in json.loads(out.read_text())["runs"]}
    calls.clear()
    interrupted[0] = False
    # the dense models are loaded from beside the JSON, not trained again
    assert (tmp_path / "prune.json.dense-seed0.pt").is_file() and (tmp_path / "prune.json.dense-seed1.pt").is_file()
    trained = prune.train

    def fine_tuning_only(model, batches, steps, *rest):  # here dense training is 2 steps, fine-tuning 1
        assert steps == 1, "the dense model was trained again"
        return trained(model, batches, steps, *rest)

    monkeypatch.setattr(prune, "train", fine_tuning_only)
    assert cli.main([*argv, "--methods", "magnitude", "taylor", "oba-fisher", "--resume"]) == 0
    assert sorted(calls) == [(0, "oba-fisher"), (0, "taylor"), (1, "oba-fisher"), (1, "taylor")]
    result = json.loads(out.read_text())
    again = {(r["seed"], r["method"]): r for r in result["runs"]}
    assert again[0, "magnitude"] == first[0, "magnitude"] and again[1, "magnitude"] == first[1, "magnitude"]
    assert [r["runs"] for r in result["rows"]] == ["2/2"] * 3
    calls.clear()
    assert cli.main([*argv, "--methods", "magnitude", "taylor", "oba-fisher", "--resume"]) == 0
    assert calls == [] and json.loads(out.read_text())["runs"] == result["runs"]
    with pytest.raises(SystemExit):
        cli.main(["prune", "--resume", "--quiet"])
    assert "--resume needs --json" in capsys.readouterr().err


def test_prune_checks_every_method_before_training(image_folder, monkeypatch):
    from winnow.demo import prune

    monkeypatch.setattr(prune, "train", lambda *a, **k: pytest.fail("trained before the methods were checked"))
    with pytest.raises(SystemExit, match="oba-fisher: ValueError: .*more than once"):
        cli.main(["prune", "--model", "nets:shared_layer_cnn", "--data", str(image_folder), "--image-size", "12",
                  "--methods", "magnitude", "oba-fisher", "--quiet", "--plot", ""])


def test_prune_bad_model_spec_is_a_clear_error(image_folder):
    with pytest.raises(SystemExit, match="module:callable"):
        cli.main(["prune", "--model", "nets", "--data", str(image_folder), "--image-size", "12"])


@pytest.mark.slow
def test_bench_quick_and_the_report(tmp_path, capsys):
    assert cli.main(["bench", "sweep", "--quick", "--device", "cpu"]) == 0
    assert "act_tangent" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "nonsense"])
    from benchmarks import report, sweep

    result = sweep.run(torch.device("cpu"), rounds=1, max_log4=6)
    kernels = {r["kernel"] for r in result["rows"]}
    assert kernels == {"importance_update_adalora", "masked_adamw_step", "act_tangent", "softmax_tangent",
                       "oba_score_accumulate"}
    assert all(r["GB/s"] > 0 and r["winnow ms"] > 0 for r in result["rows"])
    paths = report.write(torch.device("cpu"), {"sweep": result}, out_dir=tmp_path)
    assert {p.name for p in paths} == {"cpu.json", "cpu.md", "cpu-time.png", "cpu-bandwidth.png"}
    assert "## sweep" in (tmp_path / "cpu.md").read_text()
    assert json.loads((tmp_path / "cpu.json").read_text())["benchmarks"]["sweep"]["rows"]


def test_random_block_floor_benchmark_runs_its_checked_kernel(capsys):
    """The floor kernel compiles, computes MaskedAdamW's step bit for bit (checked inside the
    run, before timing) and is timed next to it on every density asked for."""
    from benchmarks import random_block_floor

    assert cli.main(["bench", "random-block-floor", "--quick", "--device", "cpu"]) == 0
    assert "floor kernel bs 256 density 0.01 random" in capsys.readouterr().out
    result = random_block_floor.run(torch.device("cpu"), num_tensors=3, total_elements=3 * 64 * 37, rounds=1,
                                    block_sizes=(64,), densities=(1.0, 0.3))
    assert [r["contender"] for r in result["rows"]] == [
        "torch AdamW fused", "winnow MaskedAdamW bs 64 density 1", "floor kernel bs 64 density 1",
        "winnow MaskedAdamW bs 64 density 0.3 random", "floor kernel bs 64 density 0.3 random"]
    assert all(r["ms"] > 0 for r in result["rows"])
    with pytest.raises(ValueError, match="CPU only"):
        random_block_floor.run(torch.device("cuda"))
