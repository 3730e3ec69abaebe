"""schedules.yaml: the real file loads, and every mistake names its entry and line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from qrunner.cron import next_fire
from qrunner.errors import ConfigError
from qrunner.schedules import Schedule, load_schedules, parse_schedules

ROOT = Path(__file__).resolve().parent.parent
SCHEDULES = ROOT / "app" / "notifyhub" / "schedules.yaml"

#: The task names the handlers register (written in parallel; these names are the contract).
TASKS = frozenset(
    {
        "generate_daily_outlooks",
        "optimize_outlook_content",
        "health_check",
        "monitor_queue_depth",
        "track_delivery_rates",
        "process_failed_messages",
        "update_meeting_statuses",
        "send_due_meeting_reminders",
        "cleanup_old_messages",
        "check_low_stock",
        "check_expiring_products",
        "stock_movement_report",
        "deliver_due_outlooks",
        "check_low_credits",
        "cleanup_inactive_users",
        "check_subscription_renewals",
        "release_expired_reservations",
        "delete_expired_report_files",
        "analyze_user_engagement",
        "optimize_send_timing",
        "evaluate_content_experiments",
    }
)

# Thursday 2026-01-01 00:00:30 UTC, and the fire each entry must have next.
T0 = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.fixture(scope="module")
def real() -> dict[str, Schedule]:
    return {s.name: s for s in load_schedules(SCHEDULES, TASKS)}


def test_real_file_schedules_every_task_once(real: dict[str, Schedule]) -> None:
    assert sorted(s.task for s in real.values()) == sorted(TASKS)


@pytest.mark.parametrize(
    ("task", "first", "second"),
    [
        ("generate_daily_outlooks", at(1, 5), at(2, 5)),  # 05:00 UTC daily
        ("optimize_outlook_content", at(4, 3), at(11, 3)),  # Sunday 03:00 UTC
        ("health_check", at(1, 4), at(1, 8)),  # every 4 h
        ("monitor_queue_depth", at(1, 0, 5), at(1, 0, 10)),  # every 5 min
        ("track_delivery_rates", at(1, 0, 30), at(1, 1)),  # every 30 min
        ("process_failed_messages", at(1, 0, 15), at(1, 0, 30)),  # every 15 min
        ("update_meeting_statuses", at(1, 0, 5), at(1, 0, 10)),  # every 5 min
        ("send_due_meeting_reminders", at(1, 0, 5), at(1, 0, 10)),  # every 5 min
        ("cleanup_old_messages", at(1, 3), at(2, 3)),  # 03:00 UTC daily
        ("check_low_stock", at(1, 6), at(1, 12)),  # every 6 h
        ("check_expiring_products", at(1, 7), at(2, 7)),  # 07:00 UTC daily
        ("stock_movement_report", at(5, 6), at(12, 6)),  # Monday 06:00 UTC
        ("deliver_due_outlooks", at(1, 0, 5), at(1, 0, 10)),  # every 5 min
        ("analyze_user_engagement", at(1, 1), at(1, 2)),  # hourly
        ("optimize_send_timing", at(1, 0, 20), at(1, 2, 20)),  # every 2 h
        ("evaluate_content_experiments", at(4, 3, 30), at(11, 3, 30)),  # Sunday 03:30 UTC
    ],
)
def test_real_file_fires_each_task_on_its_schedule(
    real: dict[str, Schedule], task: str, first: datetime, second: datetime
) -> None:
    (entry,) = [s for s in real.values() if s.task == task]
    got_first = next_fire(entry.cron, entry.timezone, T0)
    assert got_first == first
    assert next_fire(entry.cron, entry.timezone, first) == second


def test_real_file_enables_every_schedule(real: dict[str, Schedule]) -> None:
    # process_failed_messages runs too: it re-drives only transient, never maybe-sent failures
    assert {n for n, s in real.items() if not s.enabled} == set()


def test_real_file_refuses_a_task_the_handlers_do_not_register() -> None:
    with pytest.raises(ConfigError, match="unknown task 'deliver_due_outlooks'"):
        load_schedules(SCHEDULES, TASKS - {"deliver_due_outlooks"})


def test_defaults_apply_and_payload_is_kept_read_only() -> None:
    (entry,) = parse_schedules(
        "schedules:\n  - {name: a, task: t, cron: '0 5 * * *', payload: {x: 1}}\n", {"t"}
    )
    assert (entry.timezone, entry.queue, entry.catchup) == ("UTC", None, "latest")
    assert (entry.catchup_window_s, entry.jitter_s) == (86400.0, 0.0)
    assert (entry.enabled, entry.add_scheduled_for, entry.line) == (True, False, 2)
    assert dict(entry.payload) == {"x": 1}
    with pytest.raises(TypeError):
        entry.payload["x"] = 2  # type: ignore[index]


GOOD = "  - name: fine\n    task: t\n    cron: '0 5 * * *'\n"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "  - name: nightly\n    task: nope\n    cron: '0 5 * * *'\n",
            r"schedules\.yaml:5: schedule 'nightly': unknown task 'nope'; known tasks: t",
        ),
        (
            "  - name: nightly\n    task: t\n    cron: '0 25 * * *'\n",
            r"schedules\.yaml:5: schedule 'nightly': invalid cron expression '0 25 \* \* \*'",
        ),
        (
            "  - name: nightly\n    task: t\n    cron: '0 5 * *'\n",
            r"schedules\.yaml:5: schedule 'nightly': cron expression '0 5 \* \*' has 4 fields",
        ),
        (
            "  - name: nightly\n    task: t\n    cron: '0 5 * * *'\n    timezone: Mars/Base\n",
            r"schedules\.yaml:5: schedule 'nightly': unknown time zone 'Mars/Base'",
        ),
        (
            "  - name: nightly\n    task: t\n    cron: '0 5 * * *'\n    catchup_windw_s: 60\n",
            r"schedules\.yaml:5: schedule 'nightly': unknown field\(s\) catchup_windw_s",
        ),
        (
            "  - name: fine\n    task: t\n    cron: '0 6 * * *'\n",
            r"schedules\.yaml:5: schedule 'fine': duplicate name \(first defined on line 2\)",
        ),
        (
            "  - name: nightly\n    task: t\n    cron: '0 5 * * *'\n    catchup: sometimes\n",
            r"schedule 'nightly': 'catchup' must be one of skip, latest, all, not 'sometimes'",
        ),
        (
            "  - name: nightly\n    task: t\n    cron: '0 5 * * *'\n    jitter_s: -1\n",
            r"schedule 'nightly': 'jitter_s' must be a number of seconds >= 0",
        ),
        (
            "  - name: nightly\n    task: t\n    cron: '0 5 * * *'\n    enabled: 'no'\n",
            r"schedule 'nightly': 'enabled' must be true or false",
        ),
        (
            "  - name: 'bad {name}'\n    task: t\n    cron: '0 5 * * *'\n",
            r"schedule 'bad \{name\}': name may only use letters",
        ),
        ("  - task: t\n    cron: '0 5 * * *'\n", r"schedule #2: 'name' is required"),
    ],
)
def test_validation_names_the_entry_and_line(entry: str, message: str) -> None:
    text = "schedules:\n" + GOOD + entry
    with pytest.raises(ConfigError, match=message):
        parse_schedules(text, {"t"}, source="schedules.yaml")


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "schedules:\n"
        "  - {name: one, task: nope, cron: '0 5 * * *'}\n"
        "  - {name: two, task: t, cron: 'every day'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_schedules(text, {"t"}, source="s.yaml")
    message = str(caught.value)
    assert "s.yaml:2: schedule 'one': unknown task 'nope'" in message
    assert "s.yaml:3: schedule 'two': cron expression 'every day' has 2 fields" in message


def test_without_known_tasks_any_task_name_is_accepted() -> None:
    assert [s.task for s in parse_schedules("schedules:\n" + GOOD)] == ["t"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just a list\n", "expected a mapping with one key, 'schedules'"),
        ("schedules: {a: 1}\n", "'schedules' must be a list"),
        ("schedules: [\n", "not valid YAML"),
    ],
)
def test_malformed_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_schedules(text, source="x.yaml")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read schedules file"):
        load_schedules(tmp_path / "absent.yaml")


def test_empty_file_has_no_schedules() -> None:
    assert parse_schedules("") == ()
