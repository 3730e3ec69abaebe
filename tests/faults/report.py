"""Builds the measured-figures table of docs/faults.md from fault-suite reports.

    QRUNNER_FAULT_REPORT=/tmp/r6.jsonl pytest tests/faults   # once per server
    python -m tests.faults.report /tmp/r6.jsonl /tmp/r7.jsonl /tmp/v8.jsonl

Prints a Markdown table: per scenario and server, lost jobs (acknowledged enqueues that never
ran, beyond what the server itself deleted), duplicate runs, and seconds from the fault's end to
the first job started after it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cell(row: dict[str, object]) -> str:
    recovery = row.get("recovery_s")
    rec = "-" if recovery is None else f"{float(str(recovery)):.2f} s"
    return f"{row['lost']} / {row['duplicate_runs']} / {rec}"


def table(paths: list[Path]) -> str:
    servers: list[str] = []
    cells: dict[str, dict[str, str]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            server, scenario = str(row["server"]), str(row["scenario"])
            if server not in servers:
                servers.append(server)
            cells.setdefault(scenario, {})[server] = _cell(row)
    out = [
        "| scenario | " + " | ".join(servers) + " |",
        "|---|" + "---|" * len(servers),
    ]
    for scenario in sorted(cells):
        out.append(
            f"| {scenario} | "
            + " | ".join(cells[scenario].get(s, "not run") for s in servers)
            + " |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    print(table([Path(p) for p in sys.argv[1:]]))
