"""The calibration corpus as a test: stabcheck's verdicts against plain-loop ground truth.

* the recorded corpus (``calibration/records/``: real journals of every corpus model,
  re-diagnosed with today's detectors) meets the targets of calibration/README.md;
* a fast slice is trained live, by the plain loop and by stabcheck, so the recorded journals
  cannot drift from what the code does today.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.corpus import LABELS, config_paths, score, table, totals
from calibration.labels import label

pytestmark = pytest.mark.skipif(not LABELS.exists(), reason="calibration/labels.json missing")


def test_recorded_corpus_meets_the_targets() -> None:
    scores = [score(p) for p in config_paths()]
    flagged, diverged, kept, healthy, gate, models = totals(scores)
    assert models >= 8 and diverged >= 20 and healthy >= 40  # a corpus, not a sample
    assert flagged == diverged, table(scores)
    assert healthy - kept <= 0.05 * healthy, table(scores)
    assert gate == models, table(scores)
    for s in scores:  # same trajectory: errors are the detectors', not a different run
        assert s.trace_diff < 1e-4, s.name


@pytest.mark.parametrize("model", ["lstm-sgd-nesterov", "gru-adam-safe"])
def test_fast_slice_trained_live(model: str, tmp_path: Path) -> None:
    [path] = config_paths([model])
    s = score(path, live=tmp_path / model)
    assert s.trace_diff < 1e-4
    assert not s.misses and not s.alarms, (s.misses, s.alarms)
    assert s.exit_code == s.expected_exit


def test_labelling_rule() -> None:
    assert label([2.0, 1.5, 1.0, 0.8, 0.7, 0.6, 0.6, 0.6])[0] == "healthy"
    assert label([2.0, 1.9, 1.95, 1.9, 1.92, 1.91])[0] == "borderline"  # too slow to call
    assert label([2.0, 5.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5])[0] == "borderline"  # transient
    assert label([2.0, 1.0, None])[0] == "diverged"
    assert label([2.0, 2.5, 2.6, 2.4, 2.2, 2.1])[0] == "diverged"  # ended above its start
    runaway = [2.0, 1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9]
    assert label(runaway)[0] == "diverged"  # 4.5x above its best
    converged = [2.0, 0.5, 0.01, 0.01, 0.01, 0.01, 0.01, 0.04, 0.04, 0.04, 0.04, 0.04]
    assert label(converged)[0] == "healthy"  # 4x a near-zero best is noise, not a runaway
