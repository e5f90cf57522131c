"""Record a handful of real traces from the corpus as a small test fixture.

``python -m calibration.fixtures`` writes ``tests/fixtures/real_traces.json.gz``: for each
model in :data:`SELECTION`, its config, the init reports of the seeds used, and the chosen
probes' stabcheck records (from ``records/``) with the plain-loop label (``labels.json``) as
``truth``. tests/diagnose/test_real_traces.py runs the detectors on them. Neighbours matter:
a probe is judged against the lower learning rates of its grid (a failed probe is one that
made no progress where a lower LR learned), so those are recorded beside it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from calibration.corpus import CONFIGS, HERE, RECORDS, truth

FIXTURE = HERE.parent / "tests" / "fixtures" / "real_traces.json.gz"

# model -> the (lr, seed) probes recorded (at the batch size BATCH_SIZE), and why.
BATCH_SIZE = 16
SELECTION: dict[str, list[tuple[float, int]]] = {
    # healthy Adam, and a blow-up by step 1 that sits at chance while lr=0.03 learned
    "gpt2-adam": [(0.03, 0), (0.3, 0)],
    # finite runaway; a transient blow-up to 3x the initial loss that recovers to 9% of it
    "gru-rmsprop": [(0.3, 0), (0.03, 0)],
    # healthy AdamW with warmup whose gradient norm jumps 60x while the loss never responds
    "llama-adamw-warmup": [(0.3, 1)],
    # runaway from the best loss it reached (SC102)
    "lstm-sgd-nesterov": [(1.0, 0)],
    # no progress where a lower LR trained, after a blow-up
    "mobilenetv2-rmsprop": [(0.001, 1), (0.01, 1)],
    # healthy BatchNorm ResNet near zero loss: heavy-tailed gradient norm, hard batches
    "resnet-sgd-momentum": [(0.1, 1)],
    # healthy plain Adam transformer (T5): gradient norm up to 19x its median
    "t5-adam": [(0.03, 1)],
}


def _journal(model: str) -> Any:
    from stabcheck.journal import JOURNAL_NAME, read_journal

    recorded = RECORDS / f"{model}.jsonl.gz"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / JOURNAL_NAME).write_bytes(gzip.decompress(recorded.read_bytes()))
        return read_journal(Path(tmp))


def build() -> dict[str, Any]:
    """The fixture's contents."""
    out: dict[str, Any] = {}
    for model, chosen in SELECTION.items():
        contents = _journal(model)
        labels = {(p["lr"], p["seed"]): p["label"] for p in truth(CONFIGS / f"{model}.yaml")
                  if p["batch_size"] == BATCH_SIZE}
        probes = []
        for record in sorted(contents.probes.values(), key=lambda r: r.index):
            if (record.lr, record.seed) in chosen and record.batch_size == BATCH_SIZE:
                probes.append({**dataclasses.asdict(record),
                               "truth": labels[(record.lr, record.seed)]})
        if len(probes) != len(chosen):
            raise SystemExit(f"{model}: only {len(probes)} of {chosen} are recorded")
        seeds = sorted({seed for _, seed in chosen})
        out[model] = {"config": contents.header["config"],
                      "init": {str(s): contents.init[s] for s in seeds if s in contents.init},
                      "probes": probes}
    return out


def main() -> int:
    data = json.dumps(build(), sort_keys=True, separators=(",", ":")).encode()
    FIXTURE.write_bytes(gzip.compress(data, mtime=0))
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
