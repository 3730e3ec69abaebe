"""``python -m peers <peer> <command> ...``: run one measurement and print one JSON line."""

from __future__ import annotations

import importlib
import json
import sys

from peers import cli

PEERS = ("qrunner", "raw", "celery", "arq", "saq", "dramatiq", "taskiq", "rq", "huey")


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in PEERS:
        print(f"usage: python -m peers {{{','.join(PEERS)}}} <command> ...", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"peers.{argv[0]}")
    except ImportError as exc:
        # The orchestrator reports the peer as unavailable instead of failing the run.
        print(json.dumps({"unavailable": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 3
    return cli.main(module.Peer, argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
