"""The printed table, ``latest.json`` and ``latest.png`` (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _num(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The ratios the project's targets are stated in."""
    cairn = results.get("cairn", {})
    drain = _get(cairn, "drain", "runs_per_s")
    peers = results.get("systems", {})
    pgq = [v.get("runs_per_s") for k, v in peers.items() if k.startswith("pgqueuer")]
    pgq_best = max((x for x in pgq if x), default=None)
    floor_b = _get(peers, "floor_b100", "runs_per_s")
    depth = _get(cairn, "depth", "sizes") or {}
    sizes = sorted(depth, key=int)
    claim_small = _get(depth, sizes[0], "p50_ms") if sizes else None
    claim_big = _get(depth, sizes[-1], "p50_ms") if sizes else None
    light = _get(cairn, "latency", "light")
    multi = _get(cairn, "drain_multi", "runs_per_s")
    sql_alone = _get(peers, "cairn_sql", "runs_per_s")
    return {
        "cairn_drain_over_pgqueuer_best": _ratio(drain, pgq_best),
        "cairn_drain_over_floor_batched": _ratio(drain, floor_b),
        # The same drain with `cairn serve --workers N` (N in drain_multi.server_workers).
        "cairn_multi_drain_over_pgqueuer_best": _ratio(multi, pgq_best),
        "cairn_multi_drain_over_floor_batched": _ratio(multi, floor_b),
        # Cairn's statements alone (cairn_poll from asyncpg, no HTTP, no SDK): its storage's share.
        "cairn_sql_alone_over_pgqueuer_best": _ratio(sql_alone, pgq_best),
        "cairn_drain_over_cairn_sql_alone": _ratio(drain, sql_alone),
        "light_dispatch_p50_ms": _get(light, "dispatch", "p50_ms"),
        "light_dispatch_p99_ms": _get(light, "dispatch", "p99_ms"),
        "claim_p50_deep_over_shallow": _ratio(claim_big, claim_small),
        "claim_depths": [int(sizes[0]), int(sizes[-1])] if sizes else None,
        # Behind the dead entries of step runs claimed since the last VACUUM (depth.claimed_before).
        "claim_p50_claimed_over_shallow": _ratio(
            _get(cairn, "depth", "claimed_before", "floors", "p50_ms"), claim_small
        ),
        "claim_p50_claimed_from_start_over_shallow": _ratio(
            _get(cairn, "depth", "claimed_before", "from_start", "p50_ms"), claim_small
        ),
        "server_peak_rss_mb": cairn.get("server_peak_rss_mb"),
        "sql_per_step_run": _get(cairn, "drain", "xacts_per_step"),
        "sql_per_step_run_source": results.get("sql_count_source"),
    }


def table(results: dict[str, Any]) -> str:
    cairn = results.get("cairn", {})
    drain = cairn.get("drain") or {}
    base = drain.get("runs_per_s")
    rows: list[list[str]] = [
        [
            "system",
            "drain runs/s",
            "x cairn",
            "enqueue/s",
            "xacts/job",
            "CPU us/job db+srv+wrk",
            "worker RSS MB",
            "note",
        ]
    ]
    cairn_note = f"trigger via {drain.get('trigger_path', '?')}" + _spread(drain)
    if "error" in drain:
        cairn_note = drain["error"]
    rows.append(
        [
            f"cairn (SDK Worker, {cairn.get('worker_slots', '?')} slots)",
            _num(base),
            "1.00" if base else "n/a",
            _num(drain.get("trigger_per_s")),
            _num(drain.get("xacts_per_step"), 2),
            _cpu(drain),
            _num(cairn.get("worker_peak_rss_mb")),
            cairn_note,
        ]
    )
    multi = cairn.get("drain_multi")
    if multi:
        ratio = _ratio(multi.get("runs_per_s"), base)
        rows.append(
            [
                f"cairn, serve --workers {multi.get('server_workers')}",
                _num(multi.get("runs_per_s")) if "error" not in multi else "n/a",
                f"{ratio:.2f}" if ratio else "n/a",
                _num(multi.get("trigger_per_s")),
                _num(multi.get("xacts_per_step"), 2),
                _cpu(multi),
                "",
                multi.get("error", "")[:70]
                or f"server RSS (all processes) {_num(multi.get('server_peak_rss_mb'))} MB"
                + _spread(multi),
            ]
        )
    for s in results.get("systems", {}).values():
        if "error" in s:
            rows.append([s["label"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", s["error"][:70]])
            continue
        ratio = _ratio(s.get("runs_per_s"), base)
        rows.append(
            [
                s["label"],
                _num(s.get("runs_per_s")),
                f"{ratio:.2f}" if ratio else "n/a",
                _num(s.get("enqueue_per_s")),
                _num(s.get("xacts_per_step"), 2),
                _cpu(s),
                _num(s.get("worker_peak_rss_mb")),
                (s.get("note", "")[:70] + _spread(s)).strip("; "),
            ]
        )
    lines = [_render(rows)]
    lines.append("")
    lines.append(_cairn_details(cairn))
    lines.append("")
    lines.append("targets:")
    for k, v in targets(results).items():
        lines.append(f"  {k:<38} {_num(v, 3) if isinstance(v, float) else _num(v)}")
    return "\n".join(lines)


def _cpu(d: dict[str, Any]) -> str:
    """CPU µs per job over the drain's span: Postgres + Cairn server + workers = total (the
    bench's own process is in the total), and the cores busy."""
    c = d.get("cpu_per_job")
    if not c:
        return "n/a"
    return (
        f"{c['postgres_us']:.0f}+{c['server_us']:.0f}+{c['workers_us']:.0f}"
        f" = {c['total_us']:.0f} ({c['cores_busy']:.2f} cores)"
    )


def _spread(d: dict[str, Any]) -> str:
    """ "; median of 3: 6,431-7,637" when the figure is the median of several drains."""
    samples = [x for x in d.get("samples_runs_per_s") or [] if x]
    if len(samples) < 2:
        return ""
    return f"; median of {len(samples)}: {_num(min(samples))}-{_num(max(samples))}"


def _percentiles(label: str, s: dict[str, Any]) -> list[str]:
    """A row of the Cairn table with a latency summary's p50/p95/p99."""
    return [label, "", "", *(_num(s.get(k), 2) for k in ("p50_ms", "p95_ms", "p99_ms"))]


def _cairn_details(cairn: dict[str, Any]) -> str:
    rows: list[list[str]] = [["cairn", "runs/s", "step runs/s", "p50 ms", "p95 ms", "p99 ms"]]
    for key in ("chain3", "diamond"):
        d = _get(cairn, "dag", key) or {}
        rows.append(
            [f"dag {key}", _num(d.get("runs_per_s")), _num(d.get("steps_per_s")), "", "", ""]
            if "error" not in d
            else [f"dag {key}", "n/a", d["error"][:60], "", "", ""]
        )
    single = cairn.get("single_trigger") or {}
    if single.get("triggers_per_s"):
        c = single.get("cpu_per_trigger") or {}
        cpu = (
            f"CPU us/trigger db+srv+client {c['postgres_us']:.0f}+{c['server_us']:.0f}"
            f"+{c['bench_us']:.0f}"
            if c
            else ""
        )
        rows.append(
            [
                f"single POST trigger ({single['connections']} clients)",
                _num(single["triggers_per_s"]),
                cpu,
                "",
                "",
                "",
            ]
        )
    for label, d in (_get(cairn, "latency") or {}).items():
        if not isinstance(d, dict) or "dispatch" not in d:
            continue
        for part in ("dispatch", "created_to_start", "queued_to_completed"):
            how = f"{d['rate_per_s']:.0f}/s ({label}, {d.get('trigger_mode', '?')})"
            rows.append(_percentiles(f"{part} @ {how}", d.get(part) or {}))
    for size, s in (_get(cairn, "depth", "sizes") or {}).items():
        rows.append(_percentiles(f"claim @ {int(size):,} queued", s))
    before = _get(cairn, "depth", "claimed_before") or {}
    for label, how in (("floors", "from its floor"), ("from_start", "from the start")):
        if before.get(label):
            where = f"claim behind {before['claimed']:,} claimed since VACUUM ({how})"
            rows.append(_percentiles(where, before[label]))
    rows.append(
        [f"server peak RSS MB: {_num(cairn.get('server_peak_rss_mb'))}", "", "", "", "", ""]
    )
    errors = [f"  {k}: {v}" for k, v in (cairn.get("errors") or {}).items()]
    return _render(rows) + ("\nerrors:\n" + "\n".join(errors) if errors else "")


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def write(results: dict[str, Any], outdir: Path) -> tuple[Path, Path | None]:
    outdir.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    json_path = outdir / "latest.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    try:
        png = chart(results, outdir / "latest.png")
    except Exception as exc:  # the chart is a convenience; never lose the numbers for it
        print(f"chart not written: {exc}")
        png = None
    return json_path, png


def chart(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cairn = results.get("cairn", {})
    names = ["cairn"]
    values = [_get(cairn, "drain", "runs_per_s") or 0.0]
    if cairn.get("drain_multi"):
        names.append(f"cairn\nserve --workers {cairn['drain_multi'].get('server_workers')}")
        values.append(_get(cairn, "drain_multi", "runs_per_s") or 0.0)
    for s in results.get("systems", {}).values():
        names.append(s["label"].replace(", ", "\n"))
        values.append(s.get("runs_per_s") or 0.0)
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.5))
    ax = axes[0]
    mine = 2 if cairn.get("drain_multi") else 1
    colors = ["#c0392b"] * mine + ["#7f8c8d"] * (len(values) - mine)
    ax.barh(names, values, color=colors)
    ax.set_xscale("log")
    positive = [v for v in values if v > 0]
    if positive:
        ax.set_xlim(left=min(positive) / 3, right=max(positive) * 3)
    ax.set_xlabel("drain runs/s (log)")
    ax.set_title(
        f"Drain: {_get(cairn, 'drain', 'runs') or '?'} no-op runs, "
        f"{results.get('config', {}).get('workers')} worker processes"
    )
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v if v > 0 else 1, i, f" {v:,.0f}" if v else " n/a", va="center", fontsize=8)
    ax = axes[1]
    lat = _get(cairn, "latency") or {}
    labels, p50, p95, p99 = [], [], [], []
    for label, d in lat.items():
        if isinstance(d, dict) and "dispatch" in d:
            labels.append(f"{label}\n{d['rate_per_s']:.0f}/s")
            p50.append(d["dispatch"]["p50_ms"] or 0)
            p95.append(d["dispatch"]["p95_ms"] or 0)
            p99.append(d["dispatch"]["p99_ms"] or 0)
    xs = range(len(labels))
    ax.bar([x - 0.25 for x in xs], p50, 0.25, label="p50")
    ax.bar(list(xs), p95, 0.25, label="p95")
    ax.bar([x + 0.25 for x in xs], p99, 0.25, label="p99")
    ax.set_xticks(list(xs), labels)
    bars = [v for v in (*p50, *p95, *p99) if v > 0]
    if bars and max(bars) / min(bars) > 50:
        ax.set_yscale("log")
    ax.set_ylabel("ms" + (" (log)" if ax.get_yscale() == "log" else ""))
    ax.set_title("Cairn dispatch latency (trigger accepted → step start)")
    ax.legend()
    ax = axes[2]
    depth = _get(cairn, "depth", "sizes") or {}
    bars = [(f"{int(s):,}", depth[s]) for s in sorted(depth, key=int)]
    before = _get(cairn, "depth", "claimed_before") or {}
    for label, short in (("floors", "floor"), ("from_start", "start")):
        if before.get(label):
            bars.append((f"+{before['claimed'] // 1000}k\nclaimed\n({short})", before[label]))
    ax.bar([b[0] for b in bars], [b[1]["p50_ms"] or 0 for b in bars], label="p50")
    ax.plot([b[0] for b in bars], [b[1]["p95_ms"] or 0 for b in bars], "ko-", label="p95")
    low = min((b[1]["p50_ms"] or 1 for b in bars), default=1)
    if max((b[1]["p95_ms"] or 0 for b in bars), default=0) > 20 * low:
        ax.set_yscale("log")
    ax.set_ylabel("ms" + (" (log)" if ax.get_yscale() == "log" else ""))
    ax.set_xlabel("queued step runs (+ claimed since VACUUM)")
    ax.set_title("Cairn single claim (poll max_tasks=1)")
    ax.legend()
    _cpu_panel(axes[3], results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cpu_panel(ax: Any, results: dict[str, Any]) -> None:
    """CPU µs per job over each drain's span, stacked by kind of process (linear; a bar beyond
    three times Cairn's is cut at the edge, its total written beside it)."""
    cairn = results.get("cairn", {})
    rows: list[tuple[str, dict[str, Any]]] = [("cairn", _get(cairn, "drain") or {})]
    if cairn.get("drain_multi"):
        rows.append(("cairn\nserve --workers 2", cairn["drain_multi"]))
    rows += [(s["label"].replace(", ", "\n"), s) for s in results.get("systems", {}).values()]
    rows = [(name, d["cpu_per_job"]) for name, d in rows if d.get("cpu_per_job")]
    if not rows:
        ax.set_title("Cost per job: not measured")
        return
    names = [name for name, _ in rows]
    totals = [float(c["total_us"]) for _, c in rows]
    edge = min(max(totals), 3 * totals[0]) * 1.15
    left = [0.0] * len(rows)
    for kind, color in (
        ("postgres", "#2c3e50"),
        ("server", "#c0392b"),
        ("workers", "#95a5a6"),
        ("bench", "#f1c40f"),
    ):
        values = [float(c.get(f"{kind}_us") or 0.0) for _, c in rows]
        shown = [max(min(x + v, edge) - x, 0.0) for x, v in zip(left, values, strict=True)]
        ax.barh(names, shown, left=left, color=color, label=kind)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for i, (total, (_, c)) in enumerate(zip(totals, rows, strict=True)):
        ax.text(
            min(total, edge),
            i,
            f" {total:,.0f} ({c['cores_busy']:.2f} cores)",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, edge * 1.35)
    ax.set_xlabel("CPU µs per job over the drain (all processes)")
    ax.set_title("Cost per job, by process")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4)
