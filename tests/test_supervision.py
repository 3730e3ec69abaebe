"""No worker loop can die silently: a bug in any loop stops the worker process, non-zero, with
a log line naming the loop; Redis faults inside a loop are waited out instead."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrunner.errors import ConnectionLost, StreamMissing
from qrunner.supervise import LoopCrashed, supervised

pytestmark = pytest.mark.both_topologies

ROOT = Path(__file__).resolve().parent.parent
LOOPS = ["fetch", "flush", "promote", "lease", "reclaim", "janitor", "cron"]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_bug_in_any_loop_stops_the_worker_non_zero_naming_the_loop(
    loop: str, redis_url: str, tmp_path: Path
) -> None:
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text("schedules:\n  - name: tick\n    task: record\n    cron: '* * * * * *'\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")},
        "QRUNNER_REDIS_URL": redis_url,
        "QRUNNER_LEASE_MS": "1000",
        "QRUNNER_RECLAIM_INTERVAL_MS": "200",
        "BREAK_LOOP": loop,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qrunner.cli",
            "worker",
            "--handlers",
            "tests.helpers.broken_loop",
            "--schedules",
            str(schedules),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "ZeroDivisionError" in proc.stderr
    assert f"injected into the {loop} loop" in proc.stderr
    crash_lines = [line for line in proc.stderr.splitlines() if "loop crashed" in line]
    assert crash_lines and loop in crash_lines[0], proc.stderr[-2000:]


async def test_faults_are_waited_out_and_a_vanished_stream_is_recovered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a step that loses its connection twice, then finds its stream gone, then works
    script: list[BaseException | None] = [
        ConnectionLost("reset"),
        ConnectionLost("reset"),
        StreamMissing("NOGROUP", queue="q"),
        None,
    ]
    recovered: list[str | None] = []

    async def step() -> float | None:
        outcome = script.pop(0)
        if outcome is not None:
            raise outcome
        return None  # done

    async def recover(missing: StreamMissing) -> None:
        recovered.append(missing.queue)

    with caplog.at_level(logging.WARNING, logger="qrunner.supervise"):
        await supervised("demo", step, until=asyncio.Event(), on_stream_missing=recover)
    # Then the loop ran to its end, recovered the stream once and logged the fault once
    assert script == [] and recovered == ["q"]
    assert caplog.text.count("demo loop: ConnectionLost") == 1
    assert "Redis answers again" in caplog.text


async def test_a_bug_raises_loop_crashed_naming_the_loop() -> None:
    async def step() -> float | None:
        raise KeyError("bug")

    async def recover(missing: StreamMissing) -> None:
        raise AssertionError("not a missing stream")

    with pytest.raises(LoopCrashed, match="the demo loop crashed: KeyError"):
        await supervised("demo", step, until=asyncio.Event(), on_stream_missing=recover)
