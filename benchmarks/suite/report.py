"""Turn the raw step results into medians with spreads, ratios to qrunner, Markdown and JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from suite.plan import PEERS

#: metric -> the result field that is its number, and whether higher is better.
PRIMARY = {
    "enqueue_single": ("jobs_per_s", True),
    "enqueue_bulk": ("jobs_per_s", True),
    "process_noop": ("jobs_per_s", True),
    "process_redis": ("jobs_per_s", True),
    "startup": ("startup_s", False),
    "latency_p50": ("p50_ms", False),
    "latency_p99": ("p99_ms", False),
    "latency_max": ("max_ms", False),
    "memory": ("bytes_per_job", False),
}
#: Metrics measured once per peer (no worker), shared by all of its variant rows.
PEER_LEVEL = ("enqueue_single", "enqueue_bulk", "memory")


@dataclass
class Stat:
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def spread_pct(self) -> float | None:
        """Half the min-max range as a percentage of the median (None for one value)."""
        m = self.median
        if len(self.values) < 2 or not m:
            return None
        return 50 * (max(self.values) - min(self.values)) / m


#: (peer, variant or None for peer-level metrics, metric) -> Stat
Stats = dict[tuple[str, str | None, str], Stat]


def _source_metric(metric: str) -> str:
    if metric == "startup":
        return "process_noop"
    if metric.startswith("latency_"):
        return "latency"
    return metric


def aggregate(records: list[dict[str, Any]]) -> Stats:
    """(peer, variant or None, metric) -> Stat, for the main section."""
    stats: Stats = {}
    for metric, (fld, _) in PRIMARY.items():
        for rec in records:
            if rec["section"] != "main" or rec["metric"] != _source_metric(metric):
                continue
            key = (rec["peer"], rec["variant"], metric)
            st = stats.setdefault(key, Stat())
            res = rec["result"]
            if fld not in res:
                st.errors.append(_error_text(res) if "error" in res else "no result")
                continue
            st.values.append(float(res[fld]))
            if "error" in res and metric != "startup":
                st.notes.append(str(res["error"]))
            if res.get("verified") not in (None, "exact", "drained"):
                st.notes.append(str(res["verified"]))
    return stats


def _error_text(res: dict[str, Any]) -> str:
    err = str(res["error"])
    if "partial_jobs_per_s" in res:
        return f"{err} (~{res['partial_jobs_per_s']:,.0f}/s, {res.get('done', 0)} done)"
    if "done" in res:
        return f"{err} ({res['done']} done)"
    return err


def _num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(st: Stat | None, ref: Stat | None) -> str:
    if st is None:
        return "-"
    m = st.median
    if m is None:
        return "; ".join(dict.fromkeys(st.errors)) or "-"
    text = _num(m)
    if st.spread_pct is not None:
        text += f" ±{st.spread_pct:.0f}%"
    if ref is not None and ref.median:
        text += f" ({m / ref.median:.2f}x)"
    if st.errors:
        text += f" [{len(st.errors)} failed]"
    if st.notes:
        text += " ⚠ " + "; ".join(dict.fromkeys(st.notes))
    return text


def rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(peer, variant) in report order."""
    out = []
    for peer in PEERS:
        if peer in info:
            out += [(peer, v) for v in info[peer]["variants"]]
    return out


COLUMNS = (
    ("enqueue single jobs/s", "enqueue_single"),
    ("enqueue bulk jobs/s", "enqueue_bulk"),
    ("no-op jobs/s", "process_noop"),
    ("Redis-body jobs/s", "process_redis"),
    ("start-up s", "startup"),
    ("p50 ms", "latency_p50"),
    ("p99 ms", "latency_p99"),
    ("bytes/job", "memory"),
)


def _lookup(stats: Stats, peer: str, variant: str | None, metric: str) -> Stat | None:
    return stats.get((peer, None if metric in PEER_LEVEL else variant, metric))


def main_table(info: dict[str, Any], stats: Stats) -> list[str]:
    ref_variant = next(iter(info["qrunner"]["variants"])) if "qrunner" in info else None
    head = ["peer", "version", "settings", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for peer, variant in rows(info):
        meta = info[peer]
        settings = f"{meta['variants'][variant]}; bulk: {meta['bulk']}"
        name = peer if len(meta["variants"]) == 1 else f"{peer} ({variant})"
        cells = [f"**{name}**" if peer == "qrunner" else name, meta["version"], settings]
        for _, metric in COLUMNS:
            ref = _lookup(stats, "qrunner", ref_variant, metric) if ref_variant else None
            cells.append(cell(_lookup(stats, peer, variant, metric), ref))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ceiling_lines(
    info: dict[str, Any], stats: Stats, records: list[dict[str, Any]] | None = None
) -> list[str]:
    """qrunner's medians as shares of the raw loop's, and with ``records`` each repeat's own
    share (the two steps ran one right after the other, see ``plan.main_steps``) and the
    median of those: the ratio of the medians can set one repeat's qrunner against another
    repeat's raw loop, minutes apart on a host whose speed drifts."""
    if "qrunner" not in info or "raw" not in info:
        return []
    qv = next(iter(info["qrunner"]["variants"]))
    rv = next(iter(info["raw"]["variants"]))
    names = {
        "enqueue_single": "awaited enqueue vs awaited XADD",
        "enqueue_bulk": "bulk enqueue vs pipelined XADD",
        "process_noop": "no-op processing vs XREADGROUP COUNT 100 + XACK",
        "process_redis": "Redis-body processing vs the same loop running the body in 100 tasks",
    }
    out = []
    for metric, text in names.items():
        q = _lookup(stats, "qrunner", qv, metric)
        r = _lookup(stats, "raw", rv, metric)
        if q and r and q.median and r.median:
            share = 100 * q.median / r.median
            line = (
                f"- {text}: qrunner {_num(q.median)}/s = **{share:.0f}%** "
                f"of the raw {_num(r.median)}/s"
            )
            paired = paired_shares(records or [], metric)
            if len(paired) > 1:
                each = ", ".join(f"{100 * x:.0f}%" for x in paired)
                line += (
                    f"; each repeat's pair: {each}, median "
                    f"**{100 * statistics.median(paired):.0f}%**"
                )
            out.append(line)
    return out


def paired_shares(records: list[dict[str, Any]], metric: str) -> list[float]:
    """qrunner's rate over the raw loop's for ``metric``, repeat by repeat (main section)."""
    rate: dict[str, dict[int, float]] = {"qrunner": {}, "raw": {}}
    field_name = PRIMARY[metric][0]
    for rec in records:
        res = rec["result"]
        if (
            rec["section"] == "main"
            and rec["metric"] == metric
            and rec["peer"] in rate
            and field_name in res
            and "error" not in res
        ):
            rate[rec["peer"]][rec.get("rep", 0)] = float(res[field_name])
    q, r = rate["qrunner"], rate["raw"]
    return [q[k] / r[k] for k in sorted(q) if r.get(k)]


def details_table(info: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| peer | no-op check | Redis-body check | latency max ms | rate achieved/s | "
        "latency jobs received | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for peer, variant in rows(info):
        mine = [
            r
            for r in records
            if r["section"] == "main" and r["peer"] == peer and r["variant"] in (variant, None)
        ]

        def results(metric: str, mine: list[dict[str, Any]] = mine) -> list[dict[str, Any]]:
            return [r["result"] for r in mine if r["metric"] == metric]

        def checks(metric: str) -> str:
            got = [r.get("verified") or _error_text(r) for r in results(metric)]
            return ", ".join(dict.fromkeys(str(g) for g in got)) or "-"

        lat = [r for r in results("latency") if "max_ms" in r]
        errors = [_error_text(r) for r in results("latency") if "error" in r]
        errors += [
            f"{r['metric']}: {_error_text(r['result'])}"
            for r in mine
            if r["metric"].startswith("enqueue") and "error" in r["result"]
        ]
        lines.append(
            "| "
            + " | ".join(
                [
                    peer if len(info[peer]["variants"]) == 1 else f"{peer} ({variant})",
                    checks("process_noop"),
                    checks("process_redis"),
                    ", ".join(_num(r["max_ms"]) for r in lat) or "-",
                    ", ".join(f"{r['rate_achieved']:.0f}" for r in lat) or "-",
                    ", ".join(f"{r['received']}/{r['sent']}" for r in lat) or "-",
                    "; ".join(dict.fromkeys(errors)) or "",
                ]
            )
            + " |"
        )
    return lines


def scaling_lines(records: list[dict[str, Any]]) -> list[str]:
    """One row per (peer, measurement): the median of its repeats, with their range."""
    scal = [r for r in records if r["section"] == "scaling"]
    if not scal:
        return []
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in scal:
        grouped.setdefault((r["peer"], r["metric"]), []).append(r["result"])
    lines = ["| peer | measurement | result | repeats |", "|---|---|---|---|"]
    for (peer, metric), results in grouped.items():
        lines.append(
            f"| {peer} | {metric.removeprefix('scaling.')} | {_scaling_text(results)} | "
            f"{len(results)} |"
        )
    return lines + workers_ratio_lines(scal)


def emit(lines: list[str], out: Path | None) -> None:
    """Print a benchmark script's report and, with ``out``, write it there: the scripts' tail."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text, encoding="utf-8")


def median_range(values: list[float], fmt: str = "{:.3f}") -> str:
    """``median (min to max)``, each formatted with ``fmt``: the benchmark scripts' cells."""
    return (
        f"{fmt.format(statistics.median(values))} "
        f"({fmt.format(min(values))} to {fmt.format(max(values))})"
    )


def _spread(values: list[float], unit: str) -> str:
    """``median unit``, and with more than one value its range and half-range in percent."""
    m = statistics.median(values)
    text = f"{_num(m)} {unit}"
    if len(values) > 1 and m:
        lo, hi = min(values), max(values)
        text += f" ({_num(lo)} to {_num(hi)}, ±{50 * (hi - lo) / m:.0f}%)"
    return text


def _scaling_text(results: list[dict[str, Any]]) -> str:
    good = [r for r in results if "error" not in r]
    bad = [_error_text(r) for r in results if "error" in r]
    text = ""
    if good and "bytes_per_job" in good[0]:
        text = _spread([r["bytes_per_job"] for r in good], "bytes/job")
    elif good and "promote_jobs_per_s" in good[0]:
        r = good[0]
        text = (
            f"promoted at {_num(r['promote_jobs_per_s'])}/s, all {r['n']:,} done at "
            f"{_num(r['jobs_per_s'])}/s ({r.get('verified', '')})"
        )
    elif good:
        text = _spread([r["jobs_per_s"] for r in good], "jobs/s")
        startup = statistics.median(r["startup_s"] for r in good)
        checks = ", ".join(dict.fromkeys(str(r.get("verified", "")) for r in good))
        text += f", start-up {startup:.2f} s ({checks})"
        if "window" in good[0]:
            text += f", timed from {good[0]['window']}"
    if bad:
        text += ("; " if text else "") + "; ".join(dict.fromkeys(bad))
    return text


def workers_ratio_lines(scal: list[dict[str, Any]]) -> list[str]:
    """Two worker processes against one, for each peer measured both ways: the ratio of the
    medians, and each repeat's own ratio (its two rows ran one right after the other)."""
    rate: dict[tuple[str, str], dict[int, float]] = {}
    for r in scal:
        if "jobs_per_s" in r["result"] and "error" not in r["result"]:
            rate.setdefault((r["peer"], r["metric"]), {})[r.get("rep", 0)] = r["result"][
                "jobs_per_s"
            ]
    out = []
    for (peer, metric), two in rate.items():
        if not metric.startswith("scaling.workers2."):
            continue
        body = metric.rsplit(".", 1)[1]
        one = rate.get((peer, f"scaling.workers1.{body}"))
        if one:
            m2, m1 = statistics.median(two.values()), statistics.median(one.values())
            paired = [two[k] / one[k] for k in sorted(two) if k in one]
            each = ", ".join(f"{x:.2f}x" for x in paired) if len(paired) > 1 else ""
            out.append(
                f"- {peer}, {body} job: 2 processes {_num(m2)} jobs/s against 1 process "
                f"{_num(m1)} jobs/s = **{m2 / m1:.2f}x**"
                + (f" (each repeat: {each})" if each else "")
            )
    return ["", *out] if out else []


def to_json(
    meta: dict[str, Any],
    info: dict[str, Any],
    unavailable: dict[str, str],
    records: list[dict[str, Any]],
    stats: Stats,
) -> str:
    summary = [
        {
            "peer": p,
            "variant": v,
            "metric": m,
            "median": s.median,
            "spread_pct": s.spread_pct,
            **asdict(s),
        }
        for (p, v, m), s in stats.items()
    ]
    return json.dumps(
        {
            "meta": meta,
            "peers": info,
            "unavailable": unavailable,
            "summary": summary,
            "records": records,
        },
        indent=1,
        default=str,
    )


def _load_line(meta: dict[str, Any]) -> list[str]:
    load = meta.get("load")
    if not load:
        return []
    before, after = (" / ".join(f"{x:.2f}" for x in load[k]) for k in ("before", "after"))
    return [f"Machine load average (1 / 5 / 15 min) before the run: {before}; after: {after}."]


def write(
    out_md: Path,
    meta: dict[str, Any],
    info: dict[str, Any],
    unavailable: dict[str, str],
    records: list[dict[str, Any]],
    chart_name: str | None,
) -> Stats:
    stats = aggregate(records)
    lines = [f"# qrunner vs peers — {meta['date']}{' (quick)' if meta['quick'] else ''}", ""]
    lines += [
        f"`{meta['command']}` on {meta['machine']}; took {meta['duration']}.",
        f"Redis {meta['redis']['version']} ({meta['redis']['allocator']} malloc) on 127.0.0.1, "
        f'started for this run only with `save ""` and `appendonly no`; emptied '
        "(FLUSHALL, SCRIPT FLUSH) before every measurement. Python "
        f"{meta['python']}. Repeats: {meta['sizes']['repeats']}; enqueue N="
        f"{meta['sizes']['enqueue_single_n']:,} single / {meta['sizes']['enqueue_bulk_n']:,} bulk, "
        f"processing N={meta['sizes']['process_n']:,} per run (cap "
        f"{meta['sizes']['process_cap_s']:.0f} s), latency {meta['sizes']['rate']:.0f} jobs/s for "
        f"{meta['sizes']['latency_s']:g} s, memory N={meta['sizes']['memory_n']:,}.",
        *_load_line(meta),
        "",
        "Each cell: median ±half the min-max range across repeats, then (x qrunner) = this "
        "peer's median divided by qrunner's. Above 1x is better for jobs/s, worse for "
        "start-up, latency and bytes/job. ⚠ marks a run whose job count did not check out. "
        "See benchmarks/README.md for what each number means.",
        "",
    ]
    if unavailable:
        missing = "; ".join(f"{p} ({why})" for p, why in unavailable.items())
        lines += [f"Not measured: {missing}", ""]
    lines += [*main_table(info, stats), ""]
    if chart_name:
        lines += [f"![chart]({chart_name})", ""]
    ceiling = ceiling_lines(info, stats, records)
    if ceiling:
        lines += [
            "## qrunner against the raw Redis Streams ceiling (one Python process)",
            "",
            *ceiling,
            "",
        ]
    lines += ["## Checks and latency detail", "", *details_table(info, records), ""]
    scaling = scaling_lines(records)
    if scaling:
        lines += ["## Scaling", "", *scaling, ""]
    out_md.write_text("\n".join(lines), encoding="utf-8")
    out_md.with_suffix(".json").write_text(to_json(meta, info, unavailable, records, stats))
    return stats
