"""Which channel score predicts what removing the channel costs? Every channel of a trained model is
removed alone (its Linear / Conv row and bias zeroed, with the affine pair of a BatchNorm that
directly follows) and the true change of the loss measured on held-out data in float64; each score
is ranked against it (Spearman), per layer and over all layers, the latter under each per-group
normaliser Torch-Pruning offers (a plain network's groups are its layers).

Models: the `winnow prune` demo's CNN and a 784-256-128-10 ReLU MLP, trained on Fashion-MNIST as
the demo trains (2 epochs); scores from `draws` draws of the demo's 4 score batches of 128;
the oracle on the 10,000 test images. The classifier's own outputs are not channels to prune.

Scores: OBA's curvatures (winnow.oba: full, oba, self, fisher; |channel sum| as OBAImportance
ranks them), self with the first-order term (the signed second-order Taylor change, ranked as
it is), L2 magnitude (sum of squares of the channel's parameters) and first-order Taylor
|sum theta g|.

winnow bench oba-oracle   (needs the demo's Fashion-MNIST; not part of --all)
"""
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import harness

NORMALIZERS = [None, "mean", "max", "sum", "standarization", "gaussian"]
SCORES = ["full", "oba", "self", "fisher", "self + first order", "magnitude", "taylor"]


def make_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1, ties sharing their mean rank (dead channels cost exactly 0)."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def channels(model: nn.Module) -> list:
    """The prunable channel structures: every Linear / Conv's but the classifier's."""
    from winnow.oba_structures import structures

    return [s for s in structures(model) if isinstance(s.modules[0][1], (nn.Linear, nn.Conv2d))][:-1]


@torch.no_grad()
def held_out_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2000) -> float:
    return float(sum(F.cross_entropy(model(x[i:i + chunk]), y[i:i + chunk], reduction="sum")
                     for i in range(0, len(y), chunk)) / len(y))


@torch.no_grad()
def true_costs(model: nn.Module, layers, x, y) -> dict[str, torch.Tensor]:
    """{layer: per channel, held-out loss with the channel removed minus the dense loss}."""
    named = dict(model.named_parameters())
    base = held_out_loss(model, x, y)
    costs = {}
    for s in layers:
        out = torch.empty(s.count, dtype=torch.float64)
        for c in range(s.count):
            saved = {n: named[n].detach().clone() for n in s.owners}
            for n, owner in s.owners.items():
                named[n].masked_fill_(owner == c, 0)
            out[c] = held_out_loss(model, x, y) - base
            for n, v in saved.items():
                named[n].copy_(v)
        costs[s.name] = out
    return costs


def channel_scores(model: nn.Module, layers, batches) -> tuple[dict, dict]:
    """({score: {layer: per channel}}, {score: seconds})."""
    from winnow.demo.prune import loss_fn
    from winnow.oba import parameter_scores, structure_scores

    named = dict(model.named_parameters())
    out, seconds = {}, {}
    for name, curvature, first_order in [("full", "full", False), ("oba", "oba", False), ("self", "self", False),
                                         ("fisher", "fisher", False), ("self + first order", "self", True)]:
        t = time.perf_counter()
        sums = structure_scores(model, parameter_scores(model, loss_fn, batches, curvature=curvature,
                                                        first_order=first_order))
        seconds[name] = time.perf_counter() - t
        out[name] = {s.name: sums[s.name]["out"] if first_order else sums[s.name]["out"].abs() for s in layers}
    model.zero_grad()
    for b in batches:
        (loss_fn(model, b) / len(batches)).backward()
    for name, per_entry in (("magnitude", lambda p: p.detach() ** 2), ("taylor", lambda p: p.detach() * p.grad)):
        sums = structure_scores(model, {n: per_entry(p).double() for n, p in named.items() if p.grad is not None})
        out[name] = {s.name: sums[s.name]["out"] if name == "magnitude" else sums[s.name]["out"].abs()
                     for s in layers}
    model.zero_grad()
    return out, seconds


def correlations(scores: dict, costs: dict) -> dict:
    """Spearman per layer, and over all layers after each normaliser (per layer, as Torch-Pruning
    normalises per group)."""
    import torch_pruning as tp

    normalize = tp.importance.GroupMagnitudeImportance()._normalize
    row = {f"rho {layer}": spearman(scores[layer], costs[layer]) for layer in costs}
    truth = torch.cat([costs[layer] for layer in costs])
    for norm in NORMALIZERS:
        pooled = torch.cat([normalize(scores[layer].clone(), norm) for layer in costs])
        row[f"global rho ({norm or 'none'})"] = spearman(pooled, truth)
    return row


def study(model_name: str, model: nn.Module, data, draws: int, batch_size: int = 128, score_batches: int = 4):
    (x, y), (xt, yt) = data
    model = model.double().eval()
    xt = xt.double()
    layers = channels(model)
    costs = true_costs(model, layers, xt, yt)
    per_draw = []
    for draw in range(draws):
        g = torch.Generator().manual_seed(draw + 1)  # draw 0: the prune demo's score batches
        pick = torch.randperm(len(y), generator=g)[:score_batches * batch_size]
        batches = [(x[i].double(), y[i]) for i in pick.split(batch_size)]
        scores, seconds = channel_scores(model, layers, batches)
        per_draw.append({name: {**correlations(scores[name], costs), "score s": seconds.get(name, 0.0)}
                         for name in SCORES})
    rows = []
    for name in SCORES:
        runs = [d[name] for d in per_draw]
        row = {"model": model_name, "score": name}
        for key in runs[0]:
            values = torch.tensor([r[key] for r in runs], dtype=torch.float64)
            row[key] = float(values.mean())
            if len(runs) > 1:
                row[key + " sd"] = float(values.std())
        rows.append(row)
    return rows, {s.name: s.count for s in layers}


def run(device: torch.device, draws: int = 4, seed: int = 0, epochs: float = 2.0) -> dict:
    from winnow.demo import fashion
    from winnow.demo.prune import make_cnn, stream, train

    if device.type != "cpu":
        raise SystemExit("oba-oracle: the oracle runs in float64 on the CPU (--device cpu)")
    data = (fashion.load("train"), fashion.load("t10k"))
    (x, y), _ = data
    rows, layers, t0 = [], {}, time.perf_counter()
    for name, build in (("demo CNN", make_cnn), ("ReLU MLP 784-256-128-10", make_mlp)):
        torch.manual_seed(seed)
        model = build()
        train(model, stream(x, y, 128, seed), int(epochs * len(y) / 128), 2e-3)
        these, layers[name] = study(name, model, data, draws)
        rows += these
    header = (f"OBA oracle: Spearman rho of each channel score with the true held-out loss change of removing "
              f"the channel alone (float64, 10,000 Fashion-MNIST test images), per layer and global under each "
              f"Torch-Pruning normaliser; mean over {draws} draws of 4 x 128 score batches; channels per layer "
              f"{layers}; {harness.device_name(device)}; {time.perf_counter() - t0:.0f} s")
    tables = []
    for m in layers:
        mine = [r for r in rows if r["model"] == m]
        cols = ["model", "score"] + [k for k in mine[0] if k.startswith(("rho ", "global rho")) and not k.endswith(" sd")]
        tables.append(harness.format_table(mine, cols + ["score s"]))
    table = "\n".join(tables)
    return {"header": header, "table": table, "rows": rows, "layers": layers, "draws": draws, "seed": seed}
