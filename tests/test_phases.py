"""The words for what the audit is doing: cohort phase lines and what a Ctrl-C waits for."""

from __future__ import annotations

from stabcheck.phases import CohortWatch
from stabcheck.plan import Cohort, ProbeSpec


def _cohort(bs: int, start: int, lrs: tuple[float, ...], seed: int = 0) -> Cohort:
    return Cohort(bs, tuple(ProbeSpec(batch_size=bs, lr=lr, seed=seed, index=start + i)
                            for i, lr in enumerate(lrs)))


def test_a_vectorized_stop_waits_for_the_whole_running_cohort() -> None:
    cohorts = [_cohort(8, 0, (0.01, 0.1)), _cohort(16, 2, (0.01, 0.1, 1.0))]
    watch = CohortWatch(cohorts, together=True)
    assert watch.started(cohorts[1]) == "cohort 2 of 2 (3 members: bs=16, lr 0.01 to 1, seed 0)"
    assert watch.waiting_for() == "cohort 2 of 2 (3 probes training together)"
    watch.finished(2)
    assert watch.waiting_for() == "cohort 2 of 2 (2 probes training together)"
    watch.finished(3)
    watch.finished(4)
    assert watch.waiting_for() == "the running probes"


def test_a_sequential_stop_waits_for_the_running_probe_of_each_cohort() -> None:
    cohorts = [_cohort(8, 0, (0.01, 0.1)), _cohort(16, 2, (0.5,), seed=3)]
    watch = CohortWatch(cohorts, together=False)
    watch.started(cohorts[0])
    assert watch.started(cohorts[1]) == "cohort 2 of 2 (1 member: bs=16, lr 0.5, seed 3)"
    watch.finished(0)
    assert watch.waiting_for() == ("probe lr=0.1 seed=0 bs=8 (cohort 1 of 2), "
                                   "probe lr=0.5 seed=3 bs=16 (cohort 2 of 2)")
