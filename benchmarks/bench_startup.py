"""Start-up benchmark: how long each command takes before it does its own work.

    python -m benchmarks.bench_startup                    # this checkout, 7 rounds
    python -m benchmarks.bench_startup --compare OLD_DIR  # and another source tree, interleaved
    python -m benchmarks.bench_startup --rounds 3 --quick # fewer commands, fewer rounds

Every command runs in a fresh interpreter (``python -c`` calling the CLI in-process), in
rounds that interleave the commands (and the source trees), so that a load spike on a shared
machine hits every variant alike; each figure is the median over the rounds. Per command:

* ``wall``      — the whole process, interpreter start-up and exit included (what a user
                  waits for; the wrapper ends the process as the ``stabcheck`` command does);
* ``cli``       — inside the process, from before ``import stabcheck.cli`` to the command's
                  return;
* ``cli-torch`` — the same with ``import torch`` done (and timed) first, outside the
                  measured span: the Python overhead beyond torch for the commands that need
                  it (``validate`` builds the model and runs one step, ``audit`` trains).

``import torch`` alone is timed the same way as a reference. The audit whose results
``report`` re-renders is made once, before the rounds, with the checkout's own code. The
benchmark prints numbers and the load average; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_configs" / "quickstart.yaml"
WRAPPER = """\
import json, sys, time
t0 = time.perf_counter()
out, pre, args = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
torch_s = 0.0
if pre:
    import torch
    torch_s = time.perf_counter() - t0
t1 = time.perf_counter()
if args == ["import-torch"]:
    import torch
    code = 0
else:
    from stabcheck.cli import cli
    code = cli.main(args, prog_name="stabcheck", standalone_mode=False)
done = time.perf_counter()
with open(out, "w", encoding="utf-8") as fh:
    json.dump({"code": code, "cli": done - t1, "torch": torch_s}, fh)
if args != ["import-torch"]:  # the process ends as the console script's does
    from stabcheck.executors.hygiene import exit_process
    exit_process(code)
"""


def run_once(tree: Path, args: list[str], pre_torch: bool, scratch: Path) -> dict[str, float]:
    dump = scratch / "timing.json"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("GITHUB_STEP_SUMMARY", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(dump), "1" if pre_torch else "0",
                           *args], cwd=scratch, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {tree}:\n{proc.stderr[-2000:]}")
    data = json.loads(dump.read_text(encoding="utf-8"))
    return {"wall": wall, "cli": data["cli"], "torch": data["torch"]}


def make_audit(scratch: Path, config: Path) -> Path:
    out = scratch / "audit"
    subprocess.run([sys.executable, "-m", "stabcheck", "audit", str(config), "--out", str(out),
                    "--overwrite", "-q", "--format", "text"], check=True, cwd=scratch,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    return out


def tiny_config(scratch: Path) -> Path:
    """The quickstart grid cut to 2 probes of 20 steps: ``audit`` here is mostly fixed cost."""
    text = SAMPLE.read_text(encoding="utf-8")
    text = text.replace("learning_rates: [0.001, 0.003, 0.01, 0.03]", "learning_rates: [0.01]")
    text = text.replace("seeds: [0, 1, 2]", "seeds: [0]").replace("steps: 200", "steps: 20")
    path = scratch / "tiny.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compare", type=Path, default=None, metavar="DIR",
                        help="Another source tree (e.g. `git archive REV | tar -x -C DIR`).")
    parser.add_argument("--quick", action="store_true", help="--version, --help, report only.")
    args = parser.parse_args(argv)
    trees = {"this": ROOT, **({"other": args.compare.resolve()} if args.compare else {})}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        config = tiny_config(scratch)
        results = make_audit(scratch, config)
        commands: dict[str, tuple[list[str], bool]] = {
            "--version": (["--version"], False),
            "--help": (["--help"], False),
            "audit --help": (["audit", "--help"], False),
            "report": (["report", str(results), "-q", "--format", "text"], False),
        }
        if not args.quick:
            commands.update({
                "import torch": (["import-torch"], False),
                "validate": (["validate", str(config)], False),
                "validate (torch first)": (["validate", str(config)], True),
                "audit 2x20": (["audit", str(config), "--out", str(scratch / "bench-audit"),
                                "--overwrite", "-q", "--format", "text"], False),
                "audit 2x20 (torch first)": (["audit", str(config), "--out",
                                              str(scratch / "bench-audit"), "--overwrite",
                                              "-q", "--format", "text"], True),
            })
        times: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for name, (argv, pre) in commands.items():
                for label, tree in trees.items():
                    times.setdefault((name, label), []).append(run_once(tree, argv, pre,
                                                                        scratch))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{args.rounds} interleaved rounds; medians in seconds")
    header = f"{'command':28s} {'tree':6s} {'wall':>7s} {'cli':>7s} {'torch':>7s}"
    print(header + ("   wall other/this" if args.compare else ""))
    for name in commands:
        for label in trees:
            runs = times[(name, label)]
            med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cli", "torch")}
            line = (f"{name:28s} {label:6s} {med['wall']:7.3f} {med['cli']:7.3f} "
                    f"{med['torch']:7.3f}")
            if args.compare and label == "other":
                this = statistics.median(r["wall"] for r in times[(name, "this")])
                line += f"   {med['wall'] / this:6.2f}x"
            print(line)
    print("cli: inside the process, stabcheck's import and the command; with '(torch first)' "
          "import torch is done before and not counted (its time is the torch column)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
