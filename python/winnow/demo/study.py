"""Seeds and a learning-rate grid around `winnow finetune`'s single runs: the comparison's protocol.

1. Each method's learning rate is chosen on the validation split: every rate of the grid
   (`--lr-grid` multiples of the method's base rate) trains on the first seed, and the best
   validation score wins (accuracy, or the lowest loss where the task has no accuracy; a tie goes
   to the rate listed first).
2. Every seed then trains at the chosen rate (the first seed's run is the grid's), on the same
   split, with the same data order per seed for every method.
3. The table reports the mean and the sample standard deviation over the seeds.

Test numbers are computed once, at the end of each run, and nothing here reads them to choose.
With `--resume` every finished run is recorded in OUTPUT_DIR/runs/ and not trained again.
"""
import copy
import hashlib
import json
import shutil
import statistics
from pathlib import Path

# Settings that do not change what a run trains or measures.
_NOT_IN_FINGERPRINT = {"output_dir", "json", "plot", "quiet", "seeds", "lr_grid", "resume", "methods", "seed", "lr",
                       "eval_batch_size"}


def fingerprint(args, ignore=_NOT_IN_FINGERPRINT) -> str:
    """A short hash of the settings that define a run (by default its seed and learning rate aside;
    `ignore`: the settings that do not change a run)."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in ignore and not k.startswith("lr_")}
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


class RunStore:
    """Finished runs as one JSON file each, under `folder` (None: nothing is kept), named by method,
    rate, seed and the settings' fingerprint: ablations sharing a folder keep each other's runs."""

    def __init__(self, folder, fingerprint: str):
        self.folder = Path(folder) if folder else None
        self.fingerprint = fingerprint

    def _path(self, method, lr, seed) -> Path:
        return self.folder / f"{method}-lr{lr:g}-seed{seed}-{self.fingerprint}.json"

    def get(self, method, lr, seed) -> dict | None:
        if self.folder is None or not self._path(method, lr, seed).is_file():
            return None
        record = json.loads(self._path(method, lr, seed).read_text())
        return record["row"] if record.get("fingerprint") == self.fingerprint else None

    def put(self, method, lr, seed, row) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._path(method, lr, seed).write_text(
                json.dumps({"fingerprint": self.fingerprint, "row": row}, indent=2, default=str) + "\n")


def choose(rows: list[dict], metric: str, higher_is_better: bool) -> dict:
    """The row with the best `metric` (max and min return the first of equals)."""
    return (max if higher_is_better else min)(rows, key=lambda r: r[metric])


def summarize(runs: list[dict], columns: list[str]) -> dict:
    """One row for a method's runs over seeds: each numeric column's mean, and its sample standard
    deviation as "<column> sd"; other columns as the first run has them."""
    row = {"method": runs[0]["method"], "seeds": [r["seed"] for r in runs]}
    if "lr" in runs[0]:
        row["lr"] = runs[0]["lr"]
    for c in columns:
        values = [r[c] for r in runs if isinstance(r.get(c), (int, float))]
        if len(values) == len(runs):
            row[c] = statistics.fmean(values)
            row[c + " sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        elif c in runs[0]:
            row[c] = runs[0][c]
    return row


def mean_sd(mean: float, sd: float) -> str:
    """"0.771 ± 0.009": the mean to 3 significant digits, the sd to the mean's last decimal."""
    text = f"{mean:#.3g}".rstrip(".") if abs(mean) < 1000 else f"{mean:.0f}"  # "#": 0.780, not 0.78
    decimals = len(text.partition(".")[2]) if "e" not in text else 3
    return f"{text} ± {sd:.{decimals}f}"


def as_cells(row: dict, columns: list[str]) -> dict:
    """A summary row for the text table: "mean ± sd" where the seeds disagree."""
    out = {}
    for c in columns:
        if c not in row:
            continue
        sd = row.get(c + " sd")
        out[c] = row[c] if not sd else mean_sd(row[c], sd)
    return out


class Study:
    """Runs `train(method, task, args, save_to)` (one training run, returning its row) over the
    methods, the grid and the seeds."""

    def __init__(self, task, args, train):
        self.task, self.args, self.train = task, args, train
        self.seeds = args.seeds
        self.grid = args.lr_grid or [1.0]
        self.out = Path(args.output_dir) if args.output_dir else None
        self.store = RunStore(self.out / "runs" if (self.out and args.resume) else None, fingerprint(args))
        self.metric, self.higher_is_better = task.selection

    def _artifact(self, method, seed) -> Path | None:
        if self.out is None:
            return None
        return self.out / method if len(self.seeds) == 1 else self.out / f"seed{seed}" / method

    def _run(self, method, lr, seed, save_to) -> dict:
        row = self.store.get(method, lr, seed)
        if row is None:
            args = copy.copy(self.args)
            args.seed, args.lr = seed, {**self.args.lr, method: lr}
            row = {**self.train(method, self.task, args, save_to), "seed": seed, "lr": lr}
            self.store.put(method, lr, seed, row)
        return row

    def _select(self, method) -> tuple[dict, list[dict]]:
        """The first seed's run at the learning rate chosen on validation, and the grid's rows."""
        seed, base = self.seeds[0], self.args.lr[method]
        final = self._artifact(method, seed)
        if len(self.grid) == 1:
            return self._run(method, base * self.grid[0], seed, final), []
        rows, folders = [], {}
        for factor in self.grid:
            lr = base * factor
            folders[lr] = self.out / "grid" / f"{method}-lr{lr:g}" if self.out else None
            rows.append(self._run(method, lr, seed, folders[lr]))
        best = choose(rows, self.metric, self.higher_is_better)
        if self.out is not None:  # the chosen rate's artifact goes where the seed's result belongs
            chosen = folders[best["lr"]]
            if chosen.exists():
                shutil.rmtree(final, ignore_errors=True)
                final.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(chosen), str(final))
            shutil.rmtree(self.out / "grid", ignore_errors=True)
        grid = [{"lr": r["lr"], self.metric: r[self.metric], "chosen": r is best} for r in rows]
        return best, grid

    def run(self, columns: list[str]) -> dict:
        """{"rows": one summary per method, "runs": every chosen run, "lr grid": {method: rows}}."""
        rows, runs, grids = [], [], {}
        for method in self.args.methods:
            first, grid = self._select(method)
            if grid:
                grids[method] = grid
            mine = [first] + [self._run(method, first["lr"], s, self._artifact(method, s)) for s in self.seeds[1:]]
            runs += mine
            rows.append(summarize(mine, columns) if len(self.seeds) > 1 else {**first})
        return {"rows": rows, "runs": runs, "lr grid": grids}
