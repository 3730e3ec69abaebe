"""docs/migrating-from-celery.md cannot drift from the app it describes.

Every mapping table of the guide (a table whose header is :data:`HEADER`) is read row by row:

- the "qrunner task" column holds one backticked task name, which must be registered in
  ``notifyhub.app``'s registry, or the words "not yet built";
- for a registered task the "queue" and "retries, backoff, timeout, rate limit" columns must
  say what the registry says (rendered by :func:`limits_cell`);
- the "schedule entry" column holds one backticked entry name, which must exist in
  ``app/notifyhub/schedules.yaml`` and fire the row's task, "not yet built", or "-" when the
  Celery system had no beat entry; the "cron (timezone)" column must match that entry;
- the per-seed counts in the summary table must be the counts of the rows.

The ``from qrunner... import`` lines of the guide's Python snippets must name things that exist.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from notifyhub.app import SCHEDULES, registry

from qrunner import Task
from qrunner.schedules import Schedule, load_schedules

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "migrating-from-celery.md"
SCHEDULES_FILE = ROOT / "app" / "notifyhub" / "schedules.yaml"

NOT_BUILT = "not yet built"
NONE = "-"
HEADER = (
    "celery task / beat entry",
    "kind",
    "qrunner task",
    "queue",
    "retries, backoff, timeout, rate limit",
    "schedule entry",
    "cron (timezone)",
    "notes",
)
SUMMARY_HEADER = (
    "seed",
    "tasks mapped",
    "tasks not yet built",
    "schedules mapped",
    "schedules not yet built",
)
#: "task": a Celery task without a beat entry; "beat": a beat entry only; "task + beat": a task
#: with its beat entry; "other": a related qrunner task (a per-item step, an email type of a
#: generic Celery task), not counted in the summary.
KINDS = ("task", "beat", "task + beat", "other")
SEEDS = ("000", "001", "002", "003", "004")
NAME = re.compile(r"`([A-Za-z0-9_.\-]+)`")


@dataclass(frozen=True)
class Row:
    seed: str
    line: int
    cells: dict[str, str]

    def __getitem__(self, column: str) -> str:
        return self.cells[column]

    @property
    def where(self) -> str:
        return f"{DOC.name}:{self.line} (seed {self.seed})"


def split_row(line: str) -> list[str]:
    body = line.strip()
    assert body.startswith("|") and body.endswith("|"), line
    return [c.strip() for c in body[1:-1].split("|")]


def tables(text: str, header: tuple[str, ...]) -> list[tuple[str, int, list[list[str]]]]:
    """(last ``## `` heading, line number, rows) of every table whose header is ``header``."""
    lines = text.splitlines()
    found: list[tuple[str, int, list[list[str]]]] = []
    heading = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        if line.lstrip().startswith("|") and tuple(c.lower() for c in split_row(line)) == header:
            start = i + 1
            assert set(lines[i + 1].replace("|", "").strip()) <= set("-: "), lines[i + 1]
            rows: list[list[str]] = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = split_row(lines[i])
                assert len(cells) == len(header), f"line {i + 1}: {len(cells)} cells"
                rows.append(cells)
                i += 1
            found.append((heading, start, rows))
            continue
        i += 1
    return found


def seed_of(heading: str) -> str:
    match = re.match(r"Seed (\d{3})\b", heading)
    assert match, f"mapping table under {heading!r}: its heading must start 'Seed NNN'"
    return match.group(1)


def mapping_rows() -> list[Row]:
    out: list[Row] = []
    for heading, start, rows in tables(DOC.read_text(encoding="utf-8"), HEADER):
        seed = seed_of(heading)
        for n, cells in enumerate(rows):
            out.append(Row(seed, start + 2 + n, dict(zip(HEADER, cells, strict=True))))
    return out


def one_name(cell: str, where: str) -> str:
    names: list[str] = NAME.findall(cell)
    assert len(names) == 1 and cell == f"`{names[0]}`", (
        f"{where}: expected one backticked name or {NOT_BUILT!r}, got {cell!r}"
    )
    return names[0]


def limits_cell(task: Task) -> str:
    """How the guide states a task's retries, backoff, timeout and rate limit."""
    if task.max_retries == 0:
        retries = "no retries"
    else:
        plural = "retry" if task.max_retries == 1 else "retries"
        retries = (
            f"{task.max_retries} {plural}, backoff "
            f"{task.backoff_base_s:g}s..{task.backoff_cap_s:g}s"
        )
    timeout = "no timeout" if task.timeout_s is None else f"timeout {task.timeout_s:g}s"
    rate = ", ".join(task.rate_limit.rates) if task.rate_limit else "no rate limit"
    return f"{retries}, {timeout}, {rate}"


def cron_cell(entry: Schedule) -> str:
    disabled = ", disabled" if not entry.enabled else ""
    return f"`{entry.cron}` {entry.timezone}{disabled}"


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return mapping_rows()


@pytest.fixture(scope="module")
def schedules() -> dict[str, Schedule]:
    return {s.name: s for s in load_schedules(SCHEDULES_FILE)}


def test_the_guide_has_one_mapping_table_per_seed() -> None:
    found = [seed_of(h) for h, _, _ in tables(DOC.read_text(encoding="utf-8"), HEADER)]
    assert found == list(SEEDS)
    assert SCHEDULES == SCHEDULES_FILE.resolve()


def test_claimed_tasks_are_registered_with_the_stated_settings(rows: list[Row]) -> None:
    claimed = 0
    for row in rows:
        assert row["kind"] in KINDS, f"{row.where}: kind {row['kind']!r}"
        cell = row["qrunner task"]
        if cell == NOT_BUILT:
            assert row["kind"] != "other", f"{row.where}: an 'other' row names a qrunner task"
            assert row["queue"] == NONE and row["retries, backoff, timeout, rate limit"] == NONE
            assert row["notes"] not in ("", NONE), f"{row.where}: say why it is not built"
            continue
        name = one_name(cell, row.where)
        assert name in registry, f"{row.where}: `{name}` is not registered in notifyhub.app"
        task = registry.get(name)
        assert row["queue"] == f"`{task.queue}`", f"{row.where}: `{name}` runs on {task.queue}"
        assert row["retries, backoff, timeout, rate limit"] == limits_cell(task), row.where
        claimed += 1
    assert claimed > 0


def test_claimed_schedules_exist_and_fire_the_row_task(
    rows: list[Row], schedules: dict[str, Schedule]
) -> None:
    for row in rows:
        cell = row["schedule entry"]
        has_beat = "beat" in row["kind"]
        if not has_beat:
            assert cell == NONE and row["cron (timezone)"] == NONE, (
                f"{row.where}: kind {row['kind']!r} has no beat entry to map"
            )
            continue
        if cell == NOT_BUILT:
            assert row["cron (timezone)"] == NONE, row.where
            assert row["notes"] not in ("", NONE), f"{row.where}: say why it is not built"
            continue
        name = one_name(cell, row.where)
        assert name in schedules, f"{row.where}: no schedule {name!r} in schedules.yaml"
        entry = schedules[name]
        if row["qrunner task"] != NOT_BUILT:
            assert entry.task == one_name(row["qrunner task"], row.where), row.where
        assert row["cron (timezone)"] == cron_cell(entry), (
            f"{row.where}: schedules.yaml says {cron_cell(entry)}"
        )


def test_summary_counts_match_the_tables(rows: list[Row]) -> None:
    summary = tables(DOC.read_text(encoding="utf-8"), SUMMARY_HEADER)
    assert len(summary) == 1, "one summary table"
    stated = {cells[0].strip("`"): tuple(int(c) for c in cells[1:]) for cells in summary[0][2]}
    counted: dict[str, list[int]] = {s: [0, 0, 0, 0] for s in SEEDS}
    for row in rows:
        c = counted[row.seed]
        if "task" in row["kind"].split(" + "):
            c[0 if row["qrunner task"] != NOT_BUILT else 1] += 1
        if "beat" in row["kind"]:
            c[2 if row["schedule entry"] != NOT_BUILT else 3] += 1
    assert stated == {s: tuple(c) for s, c in counted.items()}


def test_snippet_imports_exist() -> None:
    text = DOC.read_text(encoding="utf-8")
    imports = re.findall(r"^from (qrunner(?:\.\w+)*) import \(?([\w, ]+)\)?$", text, re.M)
    assert imports, "the guide's snippets import from qrunner"
    for module, names in imports:
        mod = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            if name:
                assert hasattr(mod, name), f"{module} has no {name}"
