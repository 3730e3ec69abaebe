"""Fixtures of the fault-injection suite; every test here is marked ``faults``.

Run one file at a time on a small machine, e.g.
``.venv/bin/python -m pytest tests/faults/test_network.py``; leave the suite out of a run with
``-m "not faults"``. ``QRUNNER_TEST_REDIS_SERVER`` picks the redis-server binary (as for the
rest of the tests); ``QRUNNER_FAULT_REPORT=<file>`` appends one JSON line of measured figures
per scenario to that file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qrunner_devservers.embedded import RedisProcess

from tests.faults.harness import Harness


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault injection with real worker processes, Redis and a TCP proxy"
    )


@pytest.fixture
async def harness(fresh_redis: RedisProcess, tmp_path: Path) -> AsyncIterator[Harness]:
    """Private Redis (AOF on, the binary the suite runs), a proxy in front of it, no workers yet;
    everything the test started is stopped afterwards and the worker logs are printed."""
    h = Harness(tmp_path, fresh_redis)
    await h.open()
    try:
        yield h
    finally:
        await h.close()
