"""``agent_warden_policy_file_valid`` across processes: how ``--workers`` merges it."""

from __future__ import annotations

from proxy.metrics import MERGE_RULES, Metrics, Sample, merge

VALID = "agent_warden_policy_file_valid"


def merged_valid(*processes: Metrics) -> tuple[Sample, ...]:
    families = merge([p.registry.collect() for p in processes], MERGE_RULES)
    [family] = [f for f in families if f.name == VALID]
    return family.samples


def worker(valid: float) -> Metrics:
    metrics = Metrics()
    metrics.policy_file_valid.set_function(lambda: valid)
    return metrics


def test_without_a_policy_file_there_is_no_sample() -> None:
    assert merged_valid(Metrics()) == ()


def test_the_supervisor_reports_none_and_the_workers_merge_to_the_largest() -> None:
    supervisor = Metrics()  # watches the file itself, but the gauge is the workers'
    assert merged_valid(supervisor, worker(1), worker(1)) == (Sample((), 1),)
    assert merged_valid(supervisor, worker(0), worker(0)) == (Sample((), 0),)
    # Mid-way through an edit, one worker has seen it and one not: not summed to 2 or 1.5.
    assert merged_valid(supervisor, worker(1), worker(0)) == (Sample((), 1),)
