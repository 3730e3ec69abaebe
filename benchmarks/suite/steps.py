"""One step of the suite run on its own: ``python -m peers PEER ARGS...`` in this interpreter,
for the single-purpose scripts beside the suite (``backlog.py``, ``enqueue_pairs.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent


def peers_env(url: str, qrunner_root: Path = ROOT) -> dict[str, str]:
    """The environment of a ``peers`` process: the Redis URL, and qrunner imported from
    ``qrunner_root`` (another checkout for a before/after comparison)."""
    env = dict(os.environ, BENCH_REDIS_URL=url)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(qrunner_root), env.get("PYTHONPATH", "")])
    return env


def peers_step(url: str, peer: str, *args: str, qrunner_root: Path = ROOT) -> dict[str, Any]:
    """The step's JSON line; qrunner is imported from ``qrunner_root`` (see peers_env)."""
    out = subprocess.run(
        [sys.executable, "-m", "peers", peer, *args],
        cwd=BENCH,
        env=peers_env(url, qrunner_root),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result
