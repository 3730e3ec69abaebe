"""Outlook content A/B tests: deterministic assignment, the two-proportion z-test, and the
weekly evaluation promoting a winner only with enough data and a significant difference,
through a real worker and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from notifyhub.experiments import Arm, assign, create_experiment, decide, variant_for, z_test
from notifyhub.experiments import registry as experiments_registry
from redis.asyncio import Redis

from qrunner import Registry
from tests.handler_fixtures import HandlerEnv, handler_stack

pytestmark = pytest.mark.timeout(60)

LATER = datetime.now(UTC) + timedelta(days=1)


def test_assignment_is_stable_and_spreads_users() -> None:
    first = [assign("tone", u, ["plain", "warm"]) for u in range(1000)]
    assert first == [assign("tone", u, ["plain", "warm"]) for u in range(1000)]
    counts = Counter(first)
    assert 400 < counts["plain"] < 600 and 400 < counts["warm"] < 600
    # another experiment splits the same users independently
    other = [assign("layout", u, ["plain", "warm"]) for u in range(1000)]
    assert 400 < sum(a == b for a, b in zip(first, other, strict=True)) < 600


def test_z_test_matches_the_textbook_value() -> None:
    z, p = z_test(60, 100, 40, 100)  # pooled 0.5, se 0.0707
    assert round(z, 3) == 2.828 and round(p, 4) == 0.0023
    assert z_test(5, 10, 5, 10) == (0.0, 0.5)
    assert z_test(0, 0, 1, 10) == (0.0, 1.0) and z_test(10, 10, 10, 10) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("arms", "winner", "reason"),
    [
        ([Arm("a", 50, 40, 0), Arm("b", 10, 1, 0)], None, "below the minimum sample"),
        ([Arm("a", 100, 52, 0), Arm("b", 100, 48, 0)], None, "no significant difference"),
        ([Arm("a", 100, 40, 0), Arm("b", 100, 60, 0)], "b", "b beats a"),
        ([Arm("a", 100, 60, 0)], None, "fewer than two"),
    ],
)
def test_a_winner_needs_samples_and_significance(
    arms: list[Arm], winner: str | None, reason: str
) -> None:
    decision = decide(arms, min_sample=20, alpha=0.05)
    assert decision.winner == winner and reason in decision.reason


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[HandlerEnv]:
    async with handler_stack(
        database_url, redis, tmp_path, experiments_registry, Registry()
    ) as stack:
        yield HandlerEnv(*stack)


async def outlooks_for(
    env: HandlerEnv, experiment: str, users: int, view_rate: dict[str, float]
) -> None:
    """One delivered outlook per user; each variant's users viewed at the given rate."""
    seen: Counter[str] = Counter()
    async with env.db.acquire() as conn:
        for i in range(users):
            uid = await conn.fetchval(
                "INSERT INTO users (name) VALUES ($1) RETURNING id", f"{experiment} {i}"
            )
            variant = await variant_for(conn, experiment, uid)
            seen[variant] += 1
            viewed = seen[variant] % 10 < view_rate[variant] * 10
            await conn.execute(
                "INSERT INTO daily_outlooks (user_id, outlook_date, content, delivered_at,"
                " viewed_at) VALUES ($1, $2, '{}', now(), CASE WHEN $3 THEN now() END)",
                uid,
                date(2025, 3, 5),
                viewed,
            )


async def test_the_weekly_evaluation_promotes_a_clear_winner_only(env: HandlerEnv) -> None:
    # Given two experiments: one where "warm" outlooks are viewed far more, one a near tie
    async with env.db.acquire() as conn:
        await create_experiment(conn, "tone", ["plain", "warm"], min_sample=15)
        await create_experiment(conn, "layout", ["list", "card"], min_sample=15)
    await outlooks_for(env, "tone", 80, {"plain": 0.2, "warm": 0.9})
    await outlooks_for(env, "layout", 80, {"list": 0.5, "card": 0.5})
    # When the weekly task runs
    result = await env.run("evaluate_content_experiments", {"now": LATER.isoformat()})
    # Then "warm" is promoted with its z-test, "layout" keeps running
    tone, layout = result["experiments"]["tone"], result["experiments"]["layout"]
    assert tone["winner"] == "warm" and tone["p_value"] < 0.05 and tone["z"] > 0
    assert layout["winner"] is None and "no significant difference" in layout["reason"]
    rows = await env.db.fetch("SELECT name, status, winner FROM experiments ORDER BY name")
    assert [tuple(r) for r in rows] == [("layout", "running", None), ("tone", "concluded", "warm")]
    # And the outlook generation now gets the winner for every user, old or new
    async with env.db.acquire() as conn:
        assert {await variant_for(conn, "tone", uid) for uid in (1, 2, 3, 99_999)} == {"warm"}
        with pytest.raises(LookupError):
            await variant_for(conn, "missing", 1)
    # And a second run leaves the concluded experiment alone
    later = LATER + timedelta(hours=1)
    again = await env.run("evaluate_content_experiments", {"now": later.isoformat()})
    assert list(again["experiments"]) == ["layout"]
    assert await env.db.fetchval("SELECT count(*) FROM experiment_results") == 6
