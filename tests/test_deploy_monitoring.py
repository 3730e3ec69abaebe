"""deploy/ monitoring files: the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``: each alert fires on the series it is meant for), the Grafana
dashboard matches its JSON schema, and every metric the rules and panels query is one qrunner
exports (a renamed metric would otherwise leave a dashboard blank and an alert silent)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from qrunner.metrics import Metrics

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing (Debian's prometheus package; bin/test installs it)"
)


@needs_promtool
def test_alert_rules_are_valid_and_fire_as_their_unit_tests_say() -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "rules", "alerts.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 9 rules found" in check.stdout
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_grafana_dashboard_matches_its_schema() -> None:
    schema = json.loads((DEPLOY / "grafana" / "dashboard.schema.json").read_text())
    dashboard = json.loads((DEPLOY / "grafana" / "qrunner.json").read_text())
    jsonschema.validate(dashboard, schema)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    broken = dict(dashboard, panels=[dict(dashboard["panels"][0], gridPos={"h": 8, "w": 30})])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def _exported_names() -> set[str]:
    metrics = Metrics(tasks=["t"])
    metrics.job_finished("t", "q", "succeeded", 0.1)
    metrics.job_started("t", "q", 5)
    metrics.rate_limit_wait("t", 1.0)
    metrics.cron_fired("s", 1)
    metrics.job_redelivered("q", 1)
    metrics.ack_refused("q", 1)
    metrics.group_recreated("q")
    names = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        names.update(s.name for s in family.samples)
        names.add(family.name)
    # Queue-state families appear once Redis has been read; their names are fixed here.
    names.update(f"qrunner_queue_{f}" for f in ("depth", "pending", "delayed", "dead", "consumers"))
    names.update(
        {
            "qrunner_queue_oldest_job_age_seconds",
            "qrunner_queue_key_conflict",
            "qrunner_jobs_enqueued_total",
            "qrunner_jobs_in_flight",
            "qrunner_rate_limit_waiting",
            "qrunner_redis_up",
        }
    )
    return names


def _queried(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:qrunner|process)_[a-z_]+)\b", expr))


def test_every_queried_metric_is_exported() -> None:
    exported = _exported_names()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "qrunner.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = set().union(*(_queried(e) for e in exprs))
    assert queried and queried <= exported, sorted(queried - exported)
