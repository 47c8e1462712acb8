"""Plain-text tables for the benchmarks and the demo."""


def format_value(v) -> str:
    """Floats to 3 significant digits (whole numbers from 1000 up); anything else as str."""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of `columns` from `rows`; floats to 3 significant digits."""
    cells = [[format_value(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep] + [line(r) for r in cells])


def write_json(path, payload: dict) -> None:
    """payload as indented JSON (numbers, strings, lists; anything else as its str). Written to a
    temporary file and renamed over `path`, so that a run stopped mid-write (studies rewrite
    their JSON after every run and resume from it) leaves the previous file whole."""
    import json
    import os
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def scatter_plot(rows: list[dict], x: str, y: str, label: str, path, title: str = "", yerr: str | None = None) -> None:
    """One labelled point per row, y against x, saved as a PNG (matplotlib, no display); with
    `yerr`, each point's error bar is +-row[yerr] (rows without it get none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r[x], r[y], s=40)
        if yerr and r.get(yerr):
            ax.errorbar(r[x], r[y], yerr=r[yerr], fmt="none", capsize=4, color="gray")
        ax.annotate(str(r[label]), (r[x], r[y]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
