"""``qrunner worker --processes N``: one supervisor and N worker processes, so a machine's
cores all run jobs (one Python process runs on one core at a time).

The supervisor holds no Redis connection: each child is the same ``qrunner worker`` command
without ``--processes`` (``--metrics-port P`` becomes ``P + i`` for child ``i``, since children
cannot share a port). Children share the queues through the consumer group like workers on
different machines.

- **Stop**: SIGTERM / SIGINT to the supervisor is passed to every child, which finishes its
  in-flight jobs (``QRUNNER_GRACE_S``) and exits; the supervisor exits when all have, with 0
  when all exited 0. A second signal kills the children (SIGKILL) and exits 130.
- **Crash**: a child that exits on its own with a failure (a crash, an OOM kill, exit 1 from a
  loop that died) is started again, after a pause that doubles from 1 s to 30 s while children
  keep failing quickly (reset once one has run for a minute). A child that exits 2 (bad
  configuration or input, the same for every child) stops them all: restarting cannot help.
- **Burst**: with ``--burst`` each child exits 0 once the queues are drained; the supervisor
  exits when every child has.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0
RESTART_PAUSE_CAP_S = 30.0
#: A child that ran this long before failing resets the restart pause.
HEALTHY_AFTER_S = 60.0
#: Exit code of a child that was refused its configuration or input.
USAGE_EXIT = 2


def child_argv(argv: Sequence[str], index: int, metrics_port: int | None) -> list[str]:
    """The worker command line for child ``index``: ``argv`` without ``--processes`` and with
    its own metrics port."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        if metrics_port is not None and arg == "--metrics-port":
            out += [arg, str(metrics_port + index)]
            skip = True
            continue
        if metrics_port is not None and arg.startswith("--metrics-port="):
            out.append(f"--metrics-port={metrics_port + index}")
            continue
        out.append(arg)
    return [sys.executable, "-m", "qrunner.cli", *out]


class Supervisor:
    def __init__(self, argv: Sequence[str], count: int, metrics_port: int | None) -> None:
        self.argv = list(argv)
        self.count = count
        self.metrics_port = metrics_port
        self.stopping = asyncio.Event()
        self.killing = False
        self.children: dict[int, asyncio.subprocess.Process] = {}

    def _on_signal(self, signum: int) -> None:
        if self.stopping.is_set():
            log.warning("second %s: killing the workers", signal.Signals(signum).name)
            self.killing = True
            for proc in self.children.values():
                if proc.returncode is None:
                    proc.kill()
            return
        log.info(
            "%s: stopping %d worker process(es) (send again to kill them)",
            signal.Signals(signum).name,
            len(self.children),
        )
        self.stopping.set()
        for proc in self.children.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        codes = await asyncio.gather(*(self._keep(i) for i in range(self.count)))
        if self.killing:
            return 130
        if any(c == USAGE_EXIT for c in codes):
            return USAGE_EXIT
        return 0 if all(c == 0 for c in codes) else 1

    async def _keep(self, index: int) -> int:
        """Run child ``index`` until it ends for good; returns its last exit code."""
        pause = RESTART_PAUSE_S
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *child_argv(self.argv, index, self.metrics_port)
            )
            self.children[index] = proc
            log.info("worker process %d started (pid %d)", index, proc.pid)
            code = await proc.wait()
            if self.stopping.is_set() or code == 0:
                return code
            if code == USAGE_EXIT:
                log.error(
                    "worker process %d refused its configuration (exit 2); stopping all", index
                )
                self._stop_all()
                return code
            ran = time.monotonic() - started
            if ran >= HEALTHY_AFTER_S:
                pause = RESTART_PAUSE_S
            log.error(
                "worker process %d (pid %d) exited with %d after %.0fs; restarting in %.0fs",
                index,
                proc.pid,
                code,
                ran,
                pause,
            )
            try:
                await asyncio.wait_for(self.stopping.wait(), pause)
                return code  # stopped while waiting to restart
            except TimeoutError:
                pass
            pause = min(pause * 2, RESTART_PAUSE_CAP_S)

    def _stop_all(self) -> None:
        self.stopping.set()
        for proc in self.children.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)


async def supervise(argv: Sequence[str], count: int, metrics_port: int | None) -> int:
    return await Supervisor(argv, count, metrics_port).run()
