"""Run one step: the peer's adapter in the peer's venv, under a hard time cap.

The adapter and every worker it starts are killed when the step ends, whatever happened:
the adapter runs in its own session (so its process group is killed on a time-out) and
writes the process group of each worker it started to ``.work/pids/<adapter pid>``, which is
read and killed here afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from suite.plan import VENV, Step

BENCH_DIR = Path(__file__).resolve().parent.parent


class Runner:
    def __init__(self, venvs: Path, work: Path, redis_url: str) -> None:
        self.venvs = venvs
        self.work = work
        self.redis_url = redis_url
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def python(self, peer: str) -> Path:
        return self.venvs / VENV[peer] / "bin" / "python"

    def available(self, peer: str) -> bool:
        return self.python(peer).exists()

    def call(self, peer: str, args: tuple[str, ...], timeout_s: float, tag: str) -> dict[str, Any]:
        """Run ``python -m peers <peer> <args>`` and return its JSON line (or an error record)."""
        env = dict(os.environ)
        env.update(
            {
                "BENCH_REDIS_URL": self.redis_url,
                "BENCH_WORK_DIR": str(self.work),
                "PYTHONPATH": str(BENCH_DIR),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.pop("VIRTUAL_ENV", None)
        log_path = self.logs / f"{tag}.stderr"
        started = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(self.python(peer)), "-m", "peers", peer, *args],
                cwd=BENCH_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
            try:
                out, _ = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_group(proc.pid, graceful=True)
                proc.communicate()
                self._reap_workers(proc.pid)
                return {"error": "timeout", "seconds": time.monotonic() - started}
            finally:
                self._kill_group(proc.pid, graceful=False)
        self._reap_workers(proc.pid)
        return self._parse(out, proc.returncode, log_path)

    @staticmethod
    def _parse(out: bytes, code: int | None, log_path: Path) -> dict[str, Any]:
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
        if lines:
            try:
                result: dict[str, Any] = json.loads(lines[-1])
                return result
            except json.JSONDecodeError:
                pass
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"adapter exited {code}: {' | '.join(tail)[-300:]}"}

    @staticmethod
    def _kill_group(pgid: int, graceful: bool) -> None:
        try:
            if graceful:
                os.killpg(pgid, signal.SIGTERM)
                time.sleep(2)
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _reap_workers(self, adapter_pid: int) -> None:
        path = self.work / "pids" / str(adapter_pid)
        if not path.exists():
            return
        for line in path.read_text().split():
            try:
                os.killpg(int(line), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        path.unlink()

    def run(self, step: Step) -> dict[str, Any]:
        tag = f"{step.section}-{step.peer}-{step.variant or 'client'}-{step.metric}-{step.rep}"
        return self.call(step.peer, step.args, step.timeout_s, tag)
