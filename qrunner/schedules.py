"""``schedules.yaml``: the periodic jobs, loaded and checked once at start-up.

Every mistake is reported before the first tick, together, each with the file, line and entry
it concerns: a typo in a schedule must stop the deploy, not surface as a job that silently
never runs (or runs every minute). The format::

    schedules:
      - name: nightly_cleanup           # unique; [A-Za-z0-9_.-]; part of Redis keys and job ids
        task: purge_expired             # a registered task
        cron: "0 5 * * *"               # 5 fields, or 6 with seconds last; or @daily etc.
        timezone: UTC                   # IANA zone the cron fields are read in (default UTC)
        payload: {}                     # passed to the task as configured
        queue: maintenance              # optional; default: the task's own queue
        catchup: latest                 # skip | latest | all, for slots missed in an outage
        catchup_window_s: 86400         # how old a missed slot may be and still fire
        jitter_s: 0                     # spread the fire over [0, jitter_s] seconds
        enabled: true
        add_scheduled_for: false        # add {"scheduled_for": ISO time of the slot} to payload
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import orjson
import yaml

from .cron import CATCHUP_POLICIES, Catchup, Cron, CronError
from .errors import ConfigError

DEFAULT_CATCHUP_WINDOW_S = 24 * 3600.0
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True, slots=True)
class Schedule:
    """One validated entry of ``schedules.yaml``."""

    name: str
    task: str
    cron: str
    timezone: str = "UTC"
    payload: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    queue: str | None = None
    catchup: Catchup = "latest"
    catchup_window_s: float = DEFAULT_CATCHUP_WINDOW_S
    jitter_s: float = 0.0
    enabled: bool = True
    add_scheduled_for: bool = False
    line: int | None = field(default=None, compare=False)

    def compiled(self) -> Cron:
        """The parsed expression in the entry's zone (validated at load, so this cannot fail)."""
        return Cron.parse(self.cron, self.timezone)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Schedule) if f.name != "line")
_REQUIRED = ("name", "task", "cron")


def load_schedules(
    path: str | Path, known_tasks: Collection[str] | None = None
) -> tuple[Schedule, ...]:
    """Read and validate a schedules file; raises :class:`ConfigError` listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read schedules file: {exc.strerror or exc}") from exc
    return parse_schedules(text, known_tasks, source=str(p))


def parse_schedules(
    text: str, known_tasks: Collection[str] | None = None, *, source: str = "schedules.yaml"
) -> tuple[Schedule, ...]:
    """Validate YAML text. With ``known_tasks`` every entry's task must be one of them."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        return ()
    if not isinstance(data, dict) or set(data) - {"schedules"}:
        raise ConfigError(f"{source}: expected a mapping with one key, 'schedules'")
    items = data.get("schedules") or []
    if not isinstance(items, list):
        raise ConfigError(f"{source}: 'schedules' must be a list of entries")
    lines = _item_lines(root)
    errors: list[str] = []
    out: list[Schedule] = []
    seen: dict[str, int | None] = {}
    for index, raw in enumerate(items):
        line = lines[index] if index < len(lines) else None
        where = f"{source}:{line}" if line is not None else source
        label = _label(raw, index)
        problems: list[str] = []
        entry = _entry(raw, line, known_tasks, problems)
        errors.extend(f"{where}: schedule {label}: {p}" for p in problems)
        if entry is None:
            continue
        if entry.name in seen:
            first = seen[entry.name]
            at = f" (first defined on line {first})" if first is not None else ""
            errors.append(f"{where}: schedule {label}: duplicate name{at}")
            continue
        seen[entry.name] = line
        out.append(entry)
    if errors:
        raise ConfigError("invalid schedules:\n  " + "\n  ".join(errors))
    return tuple(out)


def _item_lines(root: yaml.Node | None) -> list[int]:
    """1-based line of each entry of the ``schedules`` list, for error messages."""
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if getattr(key, "value", None) == "schedules" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _label(raw: object, index: int) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        return repr(raw["name"])
    return f"#{index + 1}"


def _entry(
    raw: object, line: int | None, known_tasks: Collection[str] | None, problems: list[str]
) -> Schedule | None:
    """One entry, or None with the reasons appended to ``problems``."""
    if not isinstance(raw, dict):
        problems.append("must be a mapping of fields")
        return None
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}")
    for key in _REQUIRED:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            problems.append(f"{key!r} is required and must be a non-empty string")
    if problems:
        return None
    name, task, expr = raw["name"], raw["task"], raw["cron"]
    if not _NAME.match(name):
        problems.append("name may only use letters, digits, '_', '.' and '-' (at most 100)")
    if known_tasks is not None and task not in known_tasks:
        listing = ", ".join(sorted(known_tasks)) or "(none registered)"
        problems.append(f"unknown task {task!r}; known tasks: {listing}")
    tz = raw.get("timezone", "UTC")
    if not isinstance(tz, str):
        problems.append("'timezone' must be an IANA zone name such as Europe/Paris")
        tz = "UTC"
    try:
        Cron.parse(expr, tz)
    except CronError as exc:
        problems.append(str(exc))
    payload = raw.get("payload") or {}
    if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
        problems.append("'payload' must be a mapping with string keys")
    else:
        try:
            orjson.dumps(payload)
        except TypeError as exc:
            problems.append(f"'payload' is not JSON-serialisable: {exc}")
    queue = raw.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue):
        problems.append("'queue' must be a non-empty string")
    catchup = raw.get("catchup", "latest")
    if catchup not in CATCHUP_POLICIES:
        problems.append(f"'catchup' must be one of {', '.join(CATCHUP_POLICIES)}, not {catchup!r}")
    window = _seconds(raw, "catchup_window_s", DEFAULT_CATCHUP_WINDOW_S, problems)
    jitter = _seconds(raw, "jitter_s", 0.0, problems)
    flags = {k: raw.get(k, d) for k, d in (("enabled", True), ("add_scheduled_for", False))}
    for key, value in flags.items():
        if not isinstance(value, bool):
            problems.append(f"{key!r} must be true or false")
    if problems:
        return None
    return Schedule(
        name=name,
        task=task,
        cron=expr,
        timezone=tz,
        payload=MappingProxyType(dict(payload)),
        queue=queue,
        catchup=cast(Catchup, catchup),
        catchup_window_s=window,
        jitter_s=jitter,
        enabled=flags["enabled"],
        add_scheduled_for=flags["add_scheduled_for"],
        line=line,
    )


def _seconds(raw: dict[str, Any], key: str, default: float, problems: list[str]) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        problems.append(f"{key!r} must be a number of seconds >= 0")
        return default
    return float(value)


__all__ = ["DEFAULT_CATCHUP_WINDOW_S", "FIELDS", "Schedule", "load_schedules", "parse_schedules"]
