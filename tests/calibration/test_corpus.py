"""The calibration corpus as a test: stabcheck's verdicts against plain-loop ground truth.

* the recorded corpus (``calibration/records/``: real journals of every corpus model,
  re-diagnosed with today's detectors) meets the targets of calibration/README.md;
* a fast slice is trained live, by the plain loop and by stabcheck, so the recorded journals
  cannot drift from what the code does today.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.__main__ import main
from calibration.corpus import (
    CACHE,
    LABELS,
    RECORDS,
    cache_dir,
    config_paths,
    record,
    score,
    table,
    totals,
)
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


def test_vectorized_engine_trained_live(tmp_path: Path) -> None:
    # Llama at moderate LRs: every probe on the vectorized engine, on the plain loop's
    # trajectory (the vmap padding_idx defect of issue 13 made cohort members depart).
    [path] = config_paths(["llama-safe"])
    s = score(path, live=tmp_path / "llama-safe", engine="auto")
    assert s.engines == {"vectorized": 6}, (s.engines, s.fallbacks)
    assert s.trace_diff < 1e-4
    assert not s.misses and not s.alarms and s.exit_code == s.expected_exit == 0


def test_other_engines_keep_their_own_cache(capsys: pytest.CaptureFixture[str]) -> None:
    [path] = config_paths(["gru-adam-safe"])
    assert cache_dir(path) == CACHE / "gru-adam-safe"
    for engine in ("auto", "vectorized"):
        assert cache_dir(path, engine).parent.name == f".cache-{engine}"
        assert RECORDS not in cache_dir(path, engine).parents
        with pytest.raises(SystemExit, match="sequential"):
            record(path, engine=engine)  # records/ are the sequential reference
    with pytest.raises(SystemExit, match="unknown engine"):
        cache_dir(path, "fast")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--record", "--engine", "auto", "--models", "gru-adam-safe"])
    assert exc.value.code == 2 and "records/ is the reference" in capsys.readouterr().err


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


def test_engines_agree_probe_by_probe(tmp_path: Path) -> None:
    # GRU + RMSprop: members re-run sequentially after a run-away and members kept in the
    # stack, both compared with the sequential engine's audit on this machine.
    from calibration.agree import compare, report

    [path] = config_paths(["gru-rmsprop"])
    row = compare(path, engine="auto", rerun=True, out=tmp_path)
    assert row.probes == 10 and not row.differ, report([row], "auto")
    assert row.exit_codes == (1, 1)
    assert row.engines.get("vectorized", 0) >= 2, row.engines  # not a sequential-only run
    assert row.trace < 1e-4
    assert "same status 10/10 probes; same exit code 1/1 grids" in report([row], "auto")
