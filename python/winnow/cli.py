"""The `winnow` command: fine-tune, prune, benchmark.

  winnow finetune [options]   LoRA / LoRA+IST / AdaLoRA / ID3 / full fine-tuning of a text classifier
                              (default: the bundled MiniLM on the tweets task)
  winnow prune [options]      OBA / magnitude / Taylor structured pruning (default: a CNN on Fashion-MNIST)
  winnow bench [options]      the microbenchmark suite; --all writes the report to benchmarks/results/

`winnow <command> --help` lists a command's options.
"""
import sys
from pathlib import Path


def _benchmarks():
    """The suite lives in the source tree (benchmarks/, beside python/): found from an editable
    install or a checkout on sys.path; a wheel alone does not ship it."""
    try:
        import benchmarks.__main__ as suite
    except ImportError:
        root = Path(__file__).resolve().parents[2]
        if not (root / "benchmarks" / "__main__.py").is_file():
            raise SystemExit("winnow bench needs winnow's source tree (its benchmarks/ folder): "
                             "install from a checkout with `pip install -e .`") from None
        sys.path.insert(0, str(root))
        import benchmarks.__main__ as suite
    return suite


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "finetune":
        from winnow.demo import finetune

        return finetune.main(rest, prog="winnow finetune")
    if command == "prune":
        from winnow.demo import prune

        return prune.main(rest, prog="winnow prune")
    if command == "bench":
        return _benchmarks().main(rest, prog="winnow bench")
    print(f"winnow: unknown command {command!r} (finetune, prune, bench)\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
