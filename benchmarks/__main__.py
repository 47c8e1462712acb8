"""The microbenchmark suite: winnow bench [NAME ...] [--all] [--device cpu|cuda] [--quick]
(also python -m benchmarks [run] NAME|all).

Each benchmark prints its table and writes benchmarks/results/<name>-<device>.json; --all runs
every one and writes the report (benchmarks/results/<device>.json, .md and plots).
"""
import argparse
import inspect
import sys

import torch

from benchmarks import (adalora, harness, hvp, id3, importance, ist, ist_decoder, masked_adamw, oba_oracle,
                        random_block_floor, report, sweep)

BENCHMARKS = {
    "importance": importance.run,
    "masked_adamw": masked_adamw.run,
    "adalora": adalora.run,
    "id3": id3.run,
    "ist": ist.run,
    "hvp": hvp.run,
    "sweep": sweep.run,
}
# Run by name only (not by --all, whose report is the kernel suite): the first two need the demo's
# models, the floor a C++ compiler.
BY_NAME_ONLY = {"ist-decoder": ist_decoder.run, "oba-oracle": oba_oracle.run,
                "random-block-floor": random_block_floor.run}
QUICK = {"total_elements": 1 << 16, "num_tensors": 8, "rounds": 3, "max_log4": 7, "batch_size": 4}


def main(argv=None, prog="python -m benchmarks") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # the older spelling: python -m benchmarks run NAME
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join([*BENCHMARKS, *BY_NAME_ONLY])}, all")
    ap.add_argument("--all", action="store_true", help="run every benchmark and write the report")
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"],
                    help="default: cpu, and cuda when available")
    ap.add_argument("--quick", action="store_true", help="small sizes, nothing written (a smoke test)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: assemble the report from the results/<name>-<device>.json already there")
    args = ap.parse_args(argv)
    if args.report_only:
        device = torch.device(args.device or "cpu")
        results = harness.read_results(device, BENCHMARKS)
        if not results:
            ap.error(f"no results for {device} in {harness.RESULTS_DIR}")
        for path in report.write(device, results):
            print(f"report: {path}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS and n not in BY_NAME_ONLY and n != "all"]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join([*BENCHMARKS, *BY_NAME_ONLY])}, all)")
    everything = args.all or "all" in args.names
    names = list(BENCHMARKS) if everything else args.names
    if not names:
        ap.error("name a benchmark or give --all")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        device = torch.device(dev)
        results = {}
        for name in names:
            run = BENCHMARKS.get(name) or BY_NAME_ONLY[name]
            accepted = inspect.signature(run).parameters
            result = run(device, **{k: v for k, v in QUICK.items() if k in accepted} if args.quick else {})
            results[name] = result
            print(result["header"])
            print(result["table"])
            if not args.quick:
                print(f"written {harness.write_result(name, device, result)}")
            print(flush=True)
        if everything and not args.quick:
            for path in report.write(device, results):
                print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
