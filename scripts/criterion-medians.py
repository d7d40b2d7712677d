#!/usr/bin/env python3
"""Prints the median time per iteration of each criterion benchmark under target/criterion.

Criterion's headline figure is a mean over samples; on this shared machine one noisy
sample moves it, so docs/benchmarks.md quotes these medians beside it.
Usage: scripts/criterion-medians.py [GROUP]
"""
import json
import pathlib
import statistics
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
group = sys.argv[1] if len(sys.argv) > 1 else None
for sample in sorted(root.glob("**/new/sample.json")):
    bench = sample.parent.parent.relative_to(root).as_posix()
    if group and not bench.startswith(group):
        continue
    data = json.loads(sample.read_text())
    per_iter = [t / i for t, i in zip(data["times"], data["iters"])]
    print(f"{bench:45} median {statistics.median(per_iter) / 1e6:9.2f} ms  "
          f"min {min(per_iter) / 1e6:9.2f} ms  samples {len(per_iter)}")
