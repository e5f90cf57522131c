"""``python -m calibration run [--models NAME ...] [--fast] [--refresh] [--rerun]
[--engine sequential|vectorized|auto]``; ``python -m calibration agree [--engine auto]
[--holdout] [--rerun]`` (engine against engine, on this machine)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from calibration.corpus import (
    ENGINES,
    LABELS,
    ablate,
    config_paths,
    details,
    engines,
    record,
    score,
    table,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="print the confusion table (truth vs stabcheck)")
    run.add_argument("--models", nargs="+", help="corpus configs by name (default: all)")
    run.add_argument("--fast", action="store_true", help="only the fast CI slice")
    run.add_argument("--holdout", action="store_true",
                     help="the hold-out configs (never used to set a threshold)")
    run.add_argument("--refresh", action="store_true", help="retrain the plain-loop truth")
    run.add_argument("--rerun", action="store_true", help="audit again (not only re-diagnose)")
    run.add_argument("--record", action="store_true",
                     help="keep the journals under calibration/records/")
    run.add_argument("--details", action="store_true", help="list every miss and false alarm")
    run.add_argument("--engine", choices=ENGINES, default="sequential",
                     help="engine that audits (default sequential: the reference, kept in "
                          "records/; others audit into calibration/.cache-<engine>/)")
    run.add_argument("--labels", type=Path, default=LABELS,
                     help="plain-loop truth cache (default calibration/labels.json; another "
                          "file with --refresh trains the truth on this machine)")
    abl = sub.add_parser("ablate", help="corpus totals with one threshold changed at a time")
    abl.add_argument("--models", nargs="+", help="corpus configs by name (default: all)")
    agr = sub.add_parser("agree", help="every probe's status: an engine vs the sequential one")
    agr.add_argument("--models", nargs="+", help="corpus configs by name (default: all)")
    agr.add_argument("--holdout", action="store_true", help="the hold-out configs")
    agr.add_argument("--engine", choices=ENGINES[1:], default="auto")
    agr.add_argument("--rerun", action="store_true",
                     help="audit both engines again (without it, the cached audits are used "
                          "and the sequential one is the recorded journal where none is cached)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "ablate":
        print(ablate(config_paths(args.models)))
        return 0
    if args.command == "agree":
        from calibration.agree import compare, report

        rows = []
        for path in config_paths(args.models, holdout=args.holdout):
            print(f"... {path.stem}", file=sys.stderr, flush=True)
            rows.append(compare(path, engine=args.engine, rerun=args.rerun))
        print(report(rows, args.engine))
        return 0 if all(not r.differ and r.exit_codes[0] == r.exit_codes[1] for r in rows) else 1
    if args.record and args.engine != "sequential":
        parser.error("--record keeps the sequential engine's journals only "
                     "(calibration/records/ is the reference)")
    scores = []
    for path in config_paths(args.models, args.fast, args.holdout):
        print(f"... {path.stem}", file=sys.stderr, flush=True)
        scores.append(score(path, refresh=args.refresh, rerun=args.rerun, engine=args.engine,
                            labels=args.labels))
        if args.record:
            record(path)
    print(table(scores))
    if args.engine != "sequential":
        print(engines(scores))
    if args.details:
        print(details(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
