"""The whole calibration corpus, trained from scratch: verdicts against plain-loop truth.

    python -m benchmarks.bench_calibration              # every corpus model (minutes)
    python -m benchmarks.bench_calibration --holdout    # the hold-out configs
    python -m benchmarks.bench_calibration --models gpt2-adam lstm-sgd-nesterov

Unlike ``python -m calibration run`` (cached labels, recorded journals re-diagnosed), this
trains every probe twice, once in the plain loop and once through ``stabcheck audit`` (the
sequential engine), into a temporary directory, and prints:

* the confusion table per model and in total (calibration/README.md says what is scored);
* per model the wall time of the audit over that of the plain loop (the cost of the
  instrumentation, init checks and diagnosis), plain loop and audit interleaved per model.

Numbers are ratios on this machine; nothing is asserted. State the load average with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from calibration.corpus import config_paths, details, score, table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_calibration")
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--holdout", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scores, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for path in config_paths(args.models, holdout=args.holdout):
            started = time.perf_counter()
            s = score(path, live=Path(tmp) / path.stem)
            total = time.perf_counter() - started
            scores.append(s)
            ratios.append(s.audit_s / max(s.plain_s, 1e-9))
            print(f"... {path.stem}: plain {s.plain_s:.1f}s, audit {s.audit_s:.1f}s "
                  f"({ratios[-1]:.2f}x), total {total:.1f}s", flush=True)
    print(table(scores))
    print(details(scores))
    print(f"audit / plain loop wall time: median {statistics.median(ratios):.2f}x over "
          f"{len(ratios)} models; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
