"""A/B tests of daily outlook content (seed 001's weekly content optimisation).

An experiment names two or more content variants. Each user gets one variant, chosen from a
hash of the experiment name and the user id (:func:`assign`): the same user always sees the
same variant, across processes and restarts, with no coordination. :func:`variant_for` records
the assignment the first time it is asked, so the analysis knows who saw what.

Weekly, ``evaluate_content_experiments`` compares, per running experiment, the share of
delivered outlooks that were viewed (the view rate) and the share that were rated or acted on
(the engagement rate) between variants. It promotes a winner only when

- every variant compared has at least ``min_sample`` delivered outlooks, and
- the best variant's view rate beats the runner-up's in a one-sided **two-proportion z-test**
  (pooled standard error; ``z = (p1 - p2) / sqrt(p (1 - p) (1/n1 + 1/n2))``) at the
  experiment's significance level ``alpha`` (default 0.05).

A promoted experiment is ``concluded`` with its ``winner``; :func:`variant_for` then answers the
winner for everyone, which is how the winning content becomes the default.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel

from qrunner import Context, Registry

if TYPE_CHECKING:
    from .state import HandlerState

registry = Registry()
QUEUE = "reports"


def assign(experiment: str, user_id: int, variants: Sequence[str]) -> str:
    """The variant of ``user_id``: SHA-256 of ``experiment:user_id`` modulo the variant count,
    so it is stable everywhere and independent between experiments."""
    if not variants:
        raise ValueError("an experiment needs at least one variant")
    digest = hashlib.sha256(f"{experiment}:{user_id}".encode()).digest()
    return variants[int.from_bytes(digest[:8], "big") % len(variants)]


async def create_experiment(
    conn: asyncpg.Connection,
    name: str,
    variants: Sequence[str],
    *,
    min_sample: int = 100,
    alpha: float = 0.05,
) -> None:
    """Start an experiment; starting one that exists changes nothing."""
    if len(set(variants)) < 2:
        raise ValueError("an A/B test needs at least two distinct variants")
    await conn.execute(
        "INSERT INTO experiments (name, variants, min_sample, alpha) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (name) DO NOTHING",
        name,
        list(variants),
        min_sample,
        alpha,
    )


async def variant_for(conn: asyncpg.Connection, experiment: str, user_id: int) -> str:
    """The content variant ``user_id`` gets in ``experiment``: the winner once there is one,
    else the user's assigned variant (recorded on first use). Raises ``LookupError`` for an
    unknown experiment."""
    row = await conn.fetchrow(
        "SELECT variants, status, winner FROM experiments WHERE name = $1", experiment
    )
    if row is None:
        raise LookupError(f"no experiment named {experiment!r}")
    if row["winner"] is not None:
        return str(row["winner"])
    variant = assign(experiment, user_id, row["variants"])
    await conn.execute(
        "INSERT INTO experiment_assignments (experiment, user_id, variant) VALUES ($1, $2, $3)"
        " ON CONFLICT (experiment, user_id) DO NOTHING",
        experiment,
        user_id,
        variant,
    )
    return variant


async def variants_for(
    conn: asyncpg.Connection, experiment: str, user_ids: Sequence[int]
) -> dict[int, str]:
    """:func:`variant_for` for many users in two statements (one once there is a winner)."""
    row = await conn.fetchrow(
        "SELECT variants, status, winner FROM experiments WHERE name = $1", experiment
    )
    if row is None:
        raise LookupError(f"no experiment named {experiment!r}")
    if row["winner"] is not None:
        return dict.fromkeys(user_ids, str(row["winner"]))
    chosen = {uid: assign(experiment, uid, row["variants"]) for uid in user_ids}
    await conn.execute(
        "INSERT INTO experiment_assignments (experiment, user_id, variant)"
        " SELECT $1, u, v FROM unnest($2::bigint[], $3::text[]) AS t(u, v)"
        " ON CONFLICT (experiment, user_id) DO NOTHING",
        experiment,
        list(chosen),
        list(chosen.values()),
    )
    return chosen


# -- the statistics (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arm:
    variant: str
    delivered: int
    viewed: int
    engaged: int

    @property
    def view_rate(self) -> float:
        return self.viewed / self.delivered if self.delivered else 0.0

    @property
    def engagement_rate(self) -> float:
        return self.engaged / self.delivered if self.delivered else 0.0


def z_test(successes1: int, n1: int, successes2: int, n2: int) -> tuple[float, float]:
    """One-sided two-proportion z-test that proportion 1 exceeds proportion 2, with the pooled
    standard error; returns ``(z, p_value)``. No difference to test (either sample empty, or
    every trial alike) gives ``(0.0, 1.0)``."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (successes1 + successes2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (successes1 / n1 - successes2 / n2) / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True, slots=True)
class Decision:
    winner: str | None
    reason: str
    z: float | None = None
    p_value: float | None = None


def decide(arms: Sequence[Arm], *, min_sample: int, alpha: float) -> Decision:
    """Whether the arm with the best view rate has won (see the module docstring)."""
    if len(arms) < 2:
        return Decision(None, "fewer than two variants have deliveries")
    short = [a.variant for a in arms if a.delivered < min_sample]
    if short:
        return Decision(None, f"below the minimum sample of {min_sample}: {', '.join(short)}")
    best, second = sorted(arms, key=lambda a: (-a.view_rate, -a.engagement_rate, a.variant))[:2]
    z, p = z_test(best.viewed, best.delivered, second.viewed, second.delivered)
    if p < alpha:
        return Decision(best.variant, f"{best.variant} beats {second.variant}", z, p)
    return Decision(None, f"no significant difference (p={p:.3f} >= {alpha})", z, p)


# -- the weekly task ---------------------------------------------------------------------------


class EvaluateContentExperiments(BaseModel):
    now: datetime | None = None


_ARMS = """
SELECT a.variant,
       count(o.id) FILTER (WHERE o.delivered_at IS NOT NULL) AS delivered,
       count(o.id) FILTER (WHERE o.delivered_at IS NOT NULL AND o.viewed_at IS NOT NULL) AS viewed,
       count(o.id) FILTER (WHERE o.delivered_at IS NOT NULL
                             AND (o.rating IS NOT NULL OR o.actions <> '[]'::jsonb)) AS engaged
FROM experiment_assignments a
LEFT JOIN daily_outlooks o
       ON o.user_id = a.user_id AND o.generated_at >= $2 AND o.generated_at < $3
WHERE a.experiment = $1
GROUP BY a.variant
ORDER BY a.variant
"""


async def _evaluate(
    conn: asyncpg.Connection, exp: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    rows = await conn.fetch(_ARMS, exp["name"], exp["started_at"], now)
    arms = [Arm(r["variant"], r["delivered"], r["viewed"], r["engaged"]) for r in rows]
    decision = decide(arms, min_sample=exp["min_sample"], alpha=float(exp["alpha"]))
    await conn.executemany(
        "INSERT INTO experiment_results (experiment, variant, evaluated_at, delivered, viewed,"
        " engaged) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (experiment, variant, evaluated_at) DO NOTHING",
        [(exp["name"], a.variant, now, a.delivered, a.viewed, a.engaged) for a in arms],
    )
    if decision.winner is not None:
        await conn.execute(
            "UPDATE experiments SET status = 'concluded', winner = $2, concluded_at = $3,"
            " decision = $4 WHERE name = $1 AND status = 'running'",
            exp["name"],
            decision.winner,
            now,
            decision.reason,
        )
    return {
        "arms": {
            a.variant: {
                "delivered": a.delivered,
                "view_rate": round(a.view_rate, 4),
                "engagement_rate": round(a.engagement_rate, 4),
            }
            for a in arms
        },
        "winner": decision.winner,
        "reason": decision.reason,
        "z": None if decision.z is None else round(decision.z, 3),
        "p_value": None if decision.p_value is None else round(decision.p_value, 5),
    }


@registry.task(
    queue=QUEUE,
    payload=EvaluateContentExperiments,
    max_retries=2,
    backoff_base_s=300,
    timeout_s=600,
)
async def evaluate_content_experiments(
    ctx: Context[HandlerState], payload: EvaluateContentExperiments
) -> dict[str, Any]:
    """Evaluate every running experiment; promote winners (see the module docstring)."""
    now = payload.now or datetime.now(UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    results: dict[str, Any] = {}
    async with ctx.state.db.acquire() as conn, conn.transaction():
        running = await conn.fetch(
            "SELECT name, started_at, min_sample, alpha FROM experiments"
            " WHERE status = 'running' ORDER BY name FOR UPDATE"
        )
        for exp in running:
            results[exp["name"]] = await _evaluate(conn, exp, now)
    return {"evaluated_at": now.isoformat(), "experiments": results}
