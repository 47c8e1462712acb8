"""Entry point: python -m benchmarks run <name> [--device cpu|cuda] [--quick]

Prints a table and writes benchmarks/results/<name>-<device>.json.
"""
import argparse
import inspect
import sys

import torch

from benchmarks import adalora, harness, hvp, id3, importance, ist, masked_adamw

BENCHMARKS = {
    "importance": importance.run,
    "masked_adamw": masked_adamw.run,
    "adalora": adalora.run,
    "id3": id3.run,
    "ist": ist.run,
    "hvp": hvp.run,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one benchmark (or 'all')")
    r.add_argument("name", choices=[*BENCHMARKS, "all"])
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, and cpu)")
    r.add_argument("--quick", action="store_true", help="a small size, for smoke tests")
    args = ap.parse_args(argv)

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    for name in names:
        for dev in devices:
            device = torch.device(dev)
            run = BENCHMARKS[name]
            quick = {"total_elements": 1 << 16, "num_tensors": 8, "rounds": 3} if args.quick else {}
            accepted = inspect.signature(run).parameters
            result = run(device, **{k: v for k, v in quick.items() if k in accepted})
            print(result["header"])
            print(result["table"])
            if not args.quick:
                path = harness.write_result(name, device, result)
                print(f"written {path}")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
