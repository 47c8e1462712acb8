"""OBA vs magnitude vs first-order Taylor structured pruning: by default a small CNN on Fashion-MNIST.

winnow prune [--methods ...] [--normalizer mean] [--targets 0.5 0.25 0.1] [--epochs 2] [--finetune-steps 150]
             [--seeds 0 1 --draws 4] [--plot PATH] [--json PATH [--resume]]
             [--model module:callable] [--data IMAGE_FOLDER] [--image-size 32]
(or python -m winnow.demo.prune)

Every method is first tried on the untrained model (a method the model cannot run stops the
command before anything trains). Then one dense model is trained per seed, and for every draw of
the score batches, FLOPs target and method a copy is pruned iteratively (re-score, remove channels
through Torch-Pruning, repeat until the target) and fine-tuned with the same budget; a run that
fails is reported on its own row and the others kept. Prints test accuracy vs FLOPs / params
(mean +- sd over seeds x draws) and writes a plot. With `--resume`, the finished runs already in
the --json file (same settings) are kept and not run again, and each seed's dense model is loaded
from beside it (JSON.dense-seedN.pt, written when it was trained): a long study can go in pieces.
"""
import argparse
import copy
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from winnow.demo import fashion
from winnow import report
from winnow.report import format_table


def make_cnn(width: int = 16) -> nn.Sequential:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, width), *block(width, 2 * width), *block(2 * width, 2 * width),
                         nn.Flatten(), nn.Linear(2 * width * 3 * 3, 128), nn.ReLU(), nn.Linear(128, 10))


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def stream(x, y, batch_size, seed, device="cpu"):
    """Endless shuffled batches, epoch after epoch, on `device`."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx].to(device), y[idx].to(device)


def train(model, batches, steps, lr, desc: str | None = None):
    """Adam with a cosine schedule; a progress bar named `desc` (None: none)."""
    from tqdm import tqdm

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with tqdm(total=steps, desc=desc, ncols=90, leave=False, disable=desc is None) as bar:
        for _, b in zip(range(steps), batches):
            opt.zero_grad()
            loss = loss_fn(model, b)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


@torch.no_grad()
def accuracy(model, x, y, batch_size=1000) -> float:
    model.eval()
    device = next(model.parameters()).device
    return sum(int((model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
               for i in range(0, len(y), batch_size)) / len(y)


# winnow prune's methods: OBA under each curvature (winnow.oba), and Torch-Pruning's own importances
CURVATURE_OF = {"oba": "full", "oba-paper": "oba", "oba-self": "self", "oba-fisher": "fisher"}
METHODS = ["oba", "oba-paper", "oba-self", "oba-fisher", "magnitude", "taylor"]
NORMALIZERS = ["none", "mean", "max", "sum", "standarization", "gaussian"]  # Torch-Pruning's spellings


def importance_and_rescore(method: str, score_batches, normalizer: str = "mean"):
    """(Torch-Pruning importance, what to run before each pruning step)."""
    import torch_pruning as tp

    from winnow.pruning import OBAImportance

    normalizer = None if normalizer == "none" else normalizer
    if method == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer=normalizer), None
    if method == "taylor":
        def grads(model):
            model.zero_grad()
            for b in score_batches:
                (loss_fn(model, b) / len(score_batches)).backward()
        return tp.importance.GroupTaylorImportance(normalizer=normalizer), grads
    if method in CURVATURE_OF:
        imp = OBAImportance(loss_fn, score_batches, curvature=CURVATURE_OF[method], normalizer=normalizer)
        return imp, imp.refresh
    raise ValueError(f"unknown method {method!r}")


def preflight(model: nn.Module, methods, example, batch, normalizer: str) -> None:
    """Score and rank every group once per method on a copy of the untrained model, so that a
    method this model cannot run fails before anything trains (SystemExit naming each)."""
    import torch_pruning as tp

    problems = []
    for method in methods:
        probe = copy.deepcopy(model).eval()
        try:
            imp, rescore = importance_and_rescore(method, [batch], normalizer)
            if rescore is not None:
                rescore(probe)
            pruner = tp.pruner.BasePruner(probe, example, importance=imp, global_pruning=True, pruning_ratio=0.5,
                                          iterative_steps=1, ignored_layers=[final_layer(probe)])
            next(iter(pruner.step(interactive=True)), None)  # global pruning scores every group first
        except Exception as e:  # noqa: BLE001  (whatever stops a method is reported, by method)
            problems.append(f"{method}: {type(e).__name__}: {e}")
    if problems:
        raise SystemExit(f"{type(model).__name__}: these methods cannot prune it (nothing was trained):\n  "
                         + "\n  ".join(problems))


def build_model(spec: str | None, in_channels: int, num_classes: int) -> nn.Module:
    """The demo CNN, or `module:callable` (torchvision style: callable(num_classes=...))."""
    if spec is None:
        if in_channels != 1:
            raise SystemExit("the default CNN takes 1-channel 28 x 28 images: give --model for other data")
        return make_cnn()
    import importlib

    module, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--model must be module:callable (e.g. torchvision.models:resnet18), got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"--model {spec}: {e}") from e
    model = fn(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise SystemExit(f"--model {spec} returned {type(model).__name__}, not an nn.Module")
    return model


def final_layer(model: nn.Module) -> nn.Module:
    """The classifier (the last Linear or Conv): its outputs are the classes, never pruned."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    if not layers:
        raise SystemExit(f"{type(model).__name__} has no Linear or Conv layer to prune")
    return layers[-1]


def load_data(args):
    if args.data is None:
        return fashion.load("train"), fashion.load("t10k"), "Fashion-MNIST"
    from winnow.demo import image_folder

    train, test, classes = image_folder.load(args.data, size=args.image_size, seed=args.seed)
    return train, test, f"{args.data} ({len(classes)} classes)"


def parser(prog="python -m winnow.demo.prune") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--methods", nargs="+", default=["oba-paper", "oba", "magnitude", "taylor"], choices=METHODS,
                    help="OBA's curvatures (winnow.oba): oba-paper = H - Gauss-Newton (OBAImportance's default: the "
                         "best OBA score in the README's study), oba = full Hessian (the authors' FastOBA), oba-self "
                         "= each channel's own quadratic (exact), oba-fisher = its per-example estimate; magnitude and "
                         "taylor: Torch-Pruning's importances")
    ap.add_argument("--normalizer", default="mean", choices=NORMALIZERS,
                    help="Torch-Pruning's per-group normaliser of every method's scores (mean: the study's best)")
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.25, 0.1], help="FLOPs kept, as fractions")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--finetune-steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--score-batches", type=int, default=4)
    ap.add_argument("--prune-steps", type=int, default=20,
                    help="at most this many re-score + prune steps to reach each target")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0, help="one dense model's seed (see --seeds)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="train a dense model per seed; the table shows mean +- sd over seeds x draws")
    ap.add_argument("--draws", type=int, default=1, help="draws of the score batches per dense model")
    ap.add_argument("--plot", default="fashion_mnist_pruning.png", help="PNG of accuracy vs FLOPs ('' for none)")
    ap.add_argument("--json", default=None, help="write the results (every run, and the summary) as JSON here; "
                                                 "rewritten as each run finishes")
    ap.add_argument("--resume", action="store_true",
                    help="keep the finished runs of --json (written with the same settings) and run only the rest")
    ap.add_argument("--model", default=None, help="module:callable returning the model (default: the demo CNN)")
    ap.add_argument("--data", default=None, help="an image folder, torchvision ImageFolder layout (default: "
                                                 "Fashion-MNIST)")
    ap.add_argument("--image-size", type=int, default=32, help="side length images from --data are resized to")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def prune_and_finetune(model, method, target, score_batches, data, args, seed) -> dict:
    """One run: a copy of the dense model pruned to `target` FLOPs by `method`, then fine-tuned."""
    from winnow.pruning import flops_and_params, prune_iteratively

    (x, y), (xt, yt), example, base_flops, base_params = data
    t1 = time.perf_counter()
    pruned = copy.deepcopy(model).eval()
    imp, rescore = importance_and_rescore(method, score_batches, args.normalizer)
    prune_iteratively(pruned, example, imp, flops_ratio=target, before_step=rescore, max_steps=args.prune_steps,
                      ignored_layers=[final_layer(pruned)])
    flops, params = flops_and_params(pruned, example)
    after_prune = accuracy(pruned, xt, yt)
    train(pruned, stream(x, y, args.batch_size, seed + 2, args.device), args.finetune_steps, args.lr / 2,
          None if args.quiet else f"  {method} @ {target}: fine-tune")
    return {"FLOPs kept": flops / base_flops, "params kept": params / base_params, "acc pruned": after_prune,
            "acc fine-tuned": accuracy(pruned, xt, yt), "s": time.perf_counter() - t1}


COLUMNS = ["FLOPs kept", "params kept", "acc pruned", "acc fine-tuned", "s"]


def summarize_runs(runs: list[dict], targets, methods) -> list[dict]:
    """A row per (target, method): mean and sd over the runs that finished; failures listed."""
    from winnow.demo.study import summarize

    rows = []
    for target in targets:
        for method in methods:
            mine = [r for r in runs if r["target"] == target and r["method"] == method]
            done = [r for r in mine if "error" not in r]
            row = {"target": target, **(summarize(done, COLUMNS) if done else {"method": method}),
                   "runs": f"{len(done)}/{len(mine)}"}
            if len(done) < len(mine):
                row["error"] = next(r["error"] for r in mine if "error" in r)
            rows.append(row)
    return rows


def main(argv=None, prog="python -m winnow.demo.prune") -> int:
    ap = parser(prog)
    args = ap.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible here")
    if any(not 0 < t < 1 for t in args.targets):
        ap.error("--targets must be fractions in (0, 1)")
    if args.epochs <= 0 or args.finetune_steps < 0 or args.batch_size < 1 or args.score_batches < 1 or args.draws < 1 \
            or args.prune_steps < 1:
        ap.error("--epochs must be > 0, --finetune-steps >= 0, --batch-size, --score-batches, --draws and "
                 "--prune-steps >= 1")
    if args.resume and not args.json:
        ap.error("--resume needs --json: the finished runs are read back from it")
    seeds = args.seeds or [args.seed]

    from tqdm import tqdm

    from winnow.demo.study import as_cells
    from winnow.pruning import flops_and_params

    t0 = time.perf_counter()
    (x, y), (xt, yt), data_name = load_data(args)
    args.batch_size = min(args.batch_size, len(y))
    example = x[:1].to(args.device)
    torch.manual_seed(seeds[0])
    preflight(build_model(args.model, x.shape[1], int(y.max()) + 1).to(args.device), args.methods, example,
              (x[:2].to(args.device), y[:2].to(args.device)), args.normalizer)
    finished, finished_dense = _finished_runs(args) if args.resume else ({}, {})
    runs, dense = [], []
    for seed in seeds:
        keys = [(seed, d, t, m) for d in range(args.draws) for t in args.targets for m in args.methods]
        if seed in finished_dense and all(key in finished for key in keys):
            dense.append(finished_dense[seed])
            runs += [finished[key] for key in keys]
            print(f"seed {seed}: all {len(keys)} runs kept from {args.json}")
            continue
        torch.manual_seed(seed)
        model = build_model(args.model, x.shape[1], int(y.max()) + 1).to(args.device)
        steps = max(1, int(args.epochs * len(y) / args.batch_size))
        # The dense weights are kept beside --json: a resumed study goes on from the same model,
        # even on a CPU whose rounding would train a different one.
        weights = f"{args.json}.dense-seed{seed}.pt" if args.json else None
        if seed in finished_dense and weights and os.path.isfile(weights):
            model.load_state_dict(torch.load(weights, map_location=args.device))
            dense.append(finished_dense[seed])
            how = f"loaded from {weights}"
        else:
            train(model, stream(x, y, args.batch_size, seed, args.device), steps, args.lr,
                  None if args.quiet else f"dense training (seed {seed})")
            dense.append({"seed": seed, "acc": accuracy(model, xt, yt)})
            if weights:
                torch.save(model.state_dict(), weights)
            how = f"after {steps} steps"
        base_flops, base_params = flops_and_params(model, example)
        print(f"{data_name}: dense {type(model).__name__} (seed {seed}) {base_params} params, "
              f"{base_flops / 1e6:.2f} MFLOPs, test acc {dense[-1]['acc']:.4f} {how} "
              f"({time.perf_counter() - t0:.0f} s)")
        if seed in finished_dense and finished_dense[seed] != dense[-1]:
            print(f"--resume: the dense model of seed {seed} is not the recorded one (test acc "
                  f"{finished_dense[seed]['acc']:.4f}): its runs are run again")
        data = ((x, y), (xt, yt), example, base_flops, base_params)
        for draw in range(args.draws):
            g = torch.Generator().manual_seed(seed * 1000 + draw + 1)  # seed 0, draw 0: the one-draw demo's batches
            pick = torch.randperm(len(y), generator=g)[:args.score_batches * args.batch_size]
            score_batches = [(x[i].to(args.device), y[i].to(args.device)) for i in pick.split(args.batch_size)]
            todo = [(t, m) for t in args.targets for m in args.methods]
            for target, method in tqdm(todo, desc=f"prune + fine-tune (seed {seed}, draw {draw})", ncols=90,
                                       disable=args.quiet):
                run = {"target": target, "method": method, "seed": seed, "draw": draw}
                if (seed, draw, target, method) in finished and finished_dense.get(seed) == dense[-1]:
                    runs.append(finished[(seed, draw, target, method)])
                    continue
                try:
                    run.update(prune_and_finetune(model, method, target, score_batches, data, args, seed))
                except Exception as e:  # noqa: BLE001  (a failing method keeps the finished runs and reports)
                    run["error"] = f"{type(e).__name__}: {e}"
                    print(f"{method} @ {target} (seed {seed}, draw {draw}) failed: {run['error']}")
                runs.append(run)
                if args.json:
                    _write_json(args, runs, dense, data_name)
    rows = summarize_runs(runs, args.targets, args.methods)
    cols = ["target", "method", *COLUMNS, "runs"] + (["error"] if any("error" in r for r in rows) else [])
    print(format_table([{"target": r["target"], "method": r["method"], **as_cells(r, cols)} for r in rows], cols))
    dense_acc = sum(d["acc"] for d in dense) / len(dense)
    print(f"dense test acc {dense_acc:.4f} (mean of {len(dense)}); fine-tuning: {args.finetune_steps} steps of "
          f"{args.batch_size} for every method; scores from {args.score_batches} batches, {args.draws} draw(s) per "
          f"dense model; normaliser {args.normalizer}; total {time.perf_counter() - t0:.0f} s")
    if args.json:
        _write_json(args, runs, dense, data_name, rows)
        print(f"results written to {args.json}")
    if args.plot:
        plot(rows, dense_acc, args.plot, data_name)
        print(f"plot written to {args.plot}")
    return 1 if any("error" in r for r in runs) else 0


# Settings that do not change what one (seed, draw, target, method) run does.
_NOT_IN_FINGERPRINT = {"methods", "targets", "seeds", "seed", "draws", "json", "plot", "quiet", "resume"}


def _finished_runs(args) -> tuple[dict, dict]:
    """From the --json file, if it was written with the same settings: its finished runs by
    (seed, draw, target, method), and its dense models' records by seed."""
    from winnow.demo.study import fingerprint

    if not os.path.isfile(args.json):
        return {}, {}
    with open(args.json) as f:
        previous = json.load(f)
    if previous.get("fingerprint") != fingerprint(args, _NOT_IN_FINGERPRINT):
        print(f"--resume: {args.json} was written with other settings; running everything")
        return {}, {}
    runs = {(r["seed"], r["draw"], r["target"], r["method"]): r for r in previous["runs"] if "error" not in r}
    return runs, {d["seed"]: d for d in previous["dense"]}


def _write_json(args, runs, dense, data_name, rows=None) -> None:
    from winnow.demo.study import fingerprint

    payload = {"task": "prune", "data": data_name, "settings": vars(args),
               "fingerprint": fingerprint(args, _NOT_IN_FINGERPRINT), "dense": dense,
               "dense acc": sum(d["acc"] for d in dense) / len(dense), "runs": runs}
    if rows is not None:
        payload["rows"] = rows
    report.write_json(args.json, payload)


def plot(rows, dense_acc, path, data_name="Fashion-MNIST"):
    """Accuracy vs FLOPs kept per method, after fine-tuning and right after pruning (error bars:
    the sd over seeds x draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("acc fine-tuned", "acc pruned")):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["FLOPs kept"], r[key], r.get(key + " sd", 0.0)) for r in rows
                         if r["method"] == method and key in r)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=method)
        ax.axhline(dense_acc, color="gray", linestyle="--", label="dense")
        ax.set_xlabel("FLOPs kept (fraction of dense)")
        ax.set_ylabel("test accuracy")
        ax.set_title("right after pruning" if key == "acc pruned" else "after fine-tuning")
        ax.legend()
    fig.suptitle(f"{data_name}: structured pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
