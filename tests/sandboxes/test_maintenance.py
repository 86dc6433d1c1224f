"""sandboxes/maintenance.py: the sweep's and reconcile's totals, in the database."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
from django.db import connections

from sandboxes import maintenance, reconcile, sweep
from sandboxes.models import MaintenanceCount
from tests.sandboxes.fake_backend import FakeBackend


@dataclass
class _Report:
    killed: int = 0
    errors: int = 0
    worker_lost: int = 0  # a field a report may gain later is counted as well
    actions: list[str] = field(default_factory=list)


def totals() -> dict[tuple[str, str], int]:
    return {(c.task, c.outcome): c.total for c in maintenance.totals()}


@pytest.mark.django_db
def test_passes_add_up_and_zeros_write_nothing() -> None:
    maintenance.pass_count("sweep", _Report(killed=2))
    maintenance.pass_count("sweep", _Report(killed=1, errors=1, worker_lost=3))
    maintenance.pass_count("reconcile", _Report())
    assert totals() == {
        ("sweep", "passes"): 2, ("sweep", "killed"): 3, ("sweep", "errors"): 1,
        ("sweep", "worker_lost"): 3, ("reconcile", "passes"): 1,
    }  # fmt: skip


@pytest.mark.django_db
def test_dry_runs_are_not_counted(fake_backend: FakeBackend) -> None:
    sweep.sandboxes_sweep(dry_run=True)
    reconcile.sandboxes_reconcile(dry_run=True)
    assert totals() == {}
    sweep.sandboxes_sweep()
    reconcile.sandboxes_reconcile()
    assert totals() == {("sweep", "passes"): 1, ("reconcile", "passes"): 1}


@pytest.mark.django_db(transaction=True)
def test_concurrent_passes_in_many_workers_lose_nothing() -> None:
    """Eight threads (eight database connections, as eight workers) count at once, the
    first of them racing to create the rows."""
    start = threading.Barrier(8)

    def count() -> None:
        try:
            start.wait()
            for _ in range(5):
                maintenance.pass_count("sweep", _Report(killed=1))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert totals() == {("sweep", "passes"): 40, ("sweep", "killed"): 40}
    assert MaintenanceCount.objects.count() == 2
