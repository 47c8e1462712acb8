"""The benchmark report: every benchmark's result for one device in one JSON, one markdown page
and two plots from the kernel sweep (time vs size; achieved GB/s vs the copy-bandwidth floor).
Written to benchmarks/results/<device>.{json,md} and <device>-time.png, <device>-bandwidth.png."""
from pathlib import Path

import torch

from benchmarks import harness


def write(device: torch.device, results: dict[str, dict], out_dir: Path = harness.RESULTS_DIR) -> list[Path]:
    """results: {benchmark name: its run() result}. Returns the files written."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    tag = harness.device_tag(device)
    env = harness.environment(device)
    paths = [out_dir / f"{tag}.json", out_dir / f"{tag}.md"]
    paths[0].write_text(json.dumps({"environment": env, "benchmarks": results}, indent=2, default=str) + "\n")
    lines = [f"# winnow benchmark report: {env['device']}", "",
             f"torch {env['torch']}, {env['cpu_count']} CPUs, {env['date']}. Every ratio compares contenders "
             "timed side by side in one process, round by round (`winnow bench --all`).", ""]
    for name, r in results.items():
        when = r.get("environment", {}).get("date")
        lines += [f"## {name}", "", r["header"] + (f" (measured {when})" if when else ""), "", r["table"], ""]
    if "sweep" in results:
        for kind in ("time", "bandwidth"):
            p = out_dir / f"{tag}-{kind}.png"
            _plot_sweep(results["sweep"], kind, p, env["device"])
            paths.append(p)
            lines += [f"![{kind}]({p.name})", ""]
    paths[1].write_text("\n".join(lines))
    return paths


def _plot_sweep(result: dict, kind: str, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, k in enumerate(kernels):
        pts = [r for r in rows if r["kernel"] == k]
        color = f"C{i}"
        n = [r["elements"] for r in pts]
        if kind == "time":
            ax.plot(n, [r["winnow ms"] for r in pts], marker="o", color=color, label=f"{k} (winnow)")
            ax.plot(n, [r["anchor ms"] for r in pts], marker="x", linestyle="--", color=color, label=f"{k} (anchor)")
        else:
            ax.plot(n, [r["GB/s"] for r in pts], marker="o", color=color, label=k)
    if kind == "time":
        ax.set_ylabel("ms per call")
        ax.set_yscale("log")
    else:
        ax.axhline(result["copy_GBps"], color="gray", linestyle="--", label="copy bandwidth (floor)")
        ax.set_ylabel("achieved GB/s")
    ax.set_xscale("log")
    ax.set_xlabel("elements")
    ax.set_title(f"{'time vs size' if kind == 'time' else 'achieved bandwidth'}: {device}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
