"""Print the benchmark results as markdown: ratio tables per group, end to end, targets.

Usage: ``python benchmarks/summarize.py RESULTS.json [--rss bench-results/rss.json]``

Reads pytest-benchmark's JSON (a partial run too: missing groups or entries are skipped). In each
group the ratio column is *metersync's median time ÷ this row's median time*: below 1 metersync is
faster than that peer; on the ``limit`` row it is how far metersync is from the limit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

GROUP_ORDER = ("codec", "insert", "fetch", "mark", "e2e")


def _group_key(group: str) -> tuple[int, str, int]:
    base, _, size = group.partition("-")
    order = next((i for i, g in enumerate(GROUP_ORDER) if base.startswith(g)), len(GROUP_ORDER))
    return order, base, int(size) if size.isdigit() else 0


def _label(bench: dict[str, Any]) -> str:
    name = re.sub(r"^(bench|test)_", "", bench["name"])
    return re.sub(r"\[\d+\]$", "", name)


def _is_metersync(bench: dict[str, Any]) -> bool:
    """metersync's own entry of a group: named ``*metersync*``, or (codec groups) the C core."""
    name = bench["name"]
    return "metersync" in name or (
        "codec" in (bench.get("group") or "") and re.search(r"_c(_|$|\[)", name) is not None
    )


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f}"
    if seconds >= 0.01:
        return f"{seconds:.3f}"
    return f"{seconds:.5f}"


def _per_100k(bench: dict[str, Any]) -> str:
    info = bench.get("extra_info", {})
    if "statements" in info and info.get("rows"):
        return f"{info['statements'] * 100_000 / info['rows']:,.0f}"
    return ""


def group_tables(benchmarks: list[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Markdown lines of the per-group tables and ``{group: {label: ratio}}`` for the targets."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in benchmarks:
        group = bench.get("group") or bench.get("extra_info", {}).get("group") or "ungrouped"
        if group.startswith("e2e") or group == "engine":
            continue
        groups.setdefault(group, []).append(bench)
    lines: list[str] = []
    ratios: dict[str, dict[str, float]] = {}
    for group in sorted(groups, key=_group_key):
        entries = sorted(groups[group], key=lambda b: b["stats"]["median"])
        ours = [b for b in entries if _is_metersync(b)]
        rows_info = next(
            (b["extra_info"].get("rows") for b in entries if b.get("extra_info")), None
        )
        title = f"### {group}" + (f" ({rows_info:,} rows)" if rows_info else "")
        lines += [
            title,
            "",
            "| benchmark | median s | metersync ÷ this | statements / 100k |",
            "|---|---:|---:|---:|",
        ]
        for bench in entries:
            median = bench["stats"]["median"]
            ratio = ""
            if len(ours) == 1 and median > 0:
                value = ours[0]["stats"]["median"] / median
                ratios.setdefault(group, {})[_label(bench)] = value
                ratio = f"{value:.2f}"
            name = f"**{_label(bench)}**" if _is_metersync(bench) else _label(bench)
            lines.append(f"| {name} | {_fmt(median)} | {ratio} | {_per_100k(bench)} |")
        lines.append("")
    return lines, ratios


def e2e_table(benchmarks: list[dict[str, Any]]) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """Markdown lines of the end-to-end table and ``{batch_size: {impl: extra_info}}``."""
    runs: dict[int, dict[str, Any]] = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if not str(info.get("group", "")).startswith("e2e"):
            continue
        runs.setdefault(int(info["batch_size"]), {})[info["impl"]] = info
    if not runs:
        return [], runs
    lines = [
        "### end to end (upload to the reference Client System on loopback)",
        "",
        "The reference server runs in its own process with its own database and sets "
        "`synchronous_commit = off` on its sessions (the sync database keeps PostgreSQL's "
        "defaults); before each run, untimed, the backlog is reset to pending, the server's "
        "table emptied and `VACUUM ANALYZE` runs on both.",
        "",
        "| B | path | readings | readings/s | × naive | statements / 100k | target ≤ | "
        "RSS growth in the bench process, MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sorted(runs):
        naive = runs[size].get("naive")
        for impl in _E2E_ORDER:
            info = runs[size].get(impl)
            if info is None:
                continue
            speedup = ""
            if naive and impl.startswith("metersync"):
                speedup = f"{info['readings_per_s'] / naive['readings_per_s']:.1f}"
            readings = f"{info['readings']:,}"
            if info.get("subset_of"):
                readings += f" (subset of {info['subset_of']:,})"
            label = _E2E_LABELS[impl]
            lines.append(
                f"| {size} | {label} | {readings} | {info['readings_per_s']:,.0f} | {speedup} | "
                f"{info['statements_per_100k']:,.0f} | {info['statement_target_per_100k']:,} | "
                f"{info['rss_growth_mb']:.0f} |"
            )
    lines.append("")
    return lines, runs


# Like for like: the naive port has one POST in flight, so metersync's one-in-flight row is the
# one compared with it (and with the server-alone ceiling, also one POST at a time); the default
# window of two is shown separately.
_E2E_ORDER = ("metersync-in-flight-1", "naive", "server_only", "metersync")
_E2E_LABELS = {
    "metersync-in-flight-1": "metersync, 1 POST in flight (like the naive port)",
    "naive": "naive port, 1 POST in flight",
    "server_only": "ceiling: the server alone, pre-encoded POSTs, 1 in flight",
    "metersync": "metersync, default window (2 POSTs in flight)",
}


def rss_table(path: Path | None) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown lines of the peak-RSS table written by ``benchmarks/rss.py``."""
    if path is None or not path.exists():
        return [], []
    data = json.loads(path.read_text())
    runs = data.get("runs", [])
    lines = [
        "### peak RSS draining a backlog (benchmarks/rss.py, fresh process per run)",
        "",
        "| backlog | batch size | readings/s | peak RSS MB (VmHWM) | target ≤ |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['readings']:,} | {r['batch_size']} | {r['readings_per_s']:,.0f} | "
            f"{r['peak_rss_mb']:.0f} | 250 |"
        )
    lines.append("")
    return lines, runs


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(
    ratios: dict[str, dict[str, float]], e2e: dict[int, dict[str, Any]], rss: list[dict[str, Any]]
) -> list[str]:
    """One line per target with its measured value (only for what the JSON holds)."""
    out: list[str] = []

    def ratio(group: str, needle: str) -> float | None:
        found = [v for k, v in ratios.get(group, {}).items() if needle in k]
        return found[0] if found else None

    codec_targets = (
        ("copy_binary", "pgpq", 0.5, "2×"),
        ("json", "polars", 0.25, "4×"),
        ("json", "pylist", 0.05, "20×"),
    )
    for group_part, peer, limit, label in codec_targets:
        group = next((g for g in ratios if g.startswith("codec") and group_part in g), None)
        if group and (r := ratio(group, peer)) is not None:
            out.append(
                f"- {group}: at least {label} faster than {peer}: {1 / r:.1f}× — "
                f"{_verdict(r <= limit)}"
            )
    insert = next((g for g in ratios if g.startswith("insert")), None)
    if insert and (r := ratio(insert, "limit")) is not None:
        out.append(
            f"- insert within 1.15× of the pre-encoded COPY limit: {r:.2f}× — {_verdict(r <= 1.15)}"
        )
    for group in sorted((g for g in ratios if g.startswith("fetch")), key=_group_key):
        if (r := ratio(group, "adbc")) is not None:
            out.append(
                f"- {group}: fetch at least as fast as ADBC: metersync takes {r:.2f}× "
                f"ADBC's time — {_verdict(r <= 1.0)}"
            )
    for group in sorted((g for g in ratios if g.startswith("mark")), key=_group_key):
        if (r := ratio(group, "limit")) is not None:
            target = " (target at 1000 ids)" if group == "mark-1000" else ""
            out.append(
                f"- {group}: mark within 1.5× of the set-based limit{target}: {r:.2f}× — "
                f"{_verdict(r <= 1.5)}"
            )
    for size, impls in sorted(e2e.items()):
        ours, naive = impls.get("metersync"), impls.get("naive")
        single = impls.get("metersync-in-flight-1")
        if single and naive:
            speed = single["readings_per_s"] / naive["readings_per_s"]
            out.append(
                f"- e2e B={size}: ≥ 5× the naive baseline's readings/s, both with 1 POST in "
                f"flight: {speed:.1f}× — {_verdict(speed >= 5)}"
            )
            ceiling = impls.get("server_only")
            if ceiling:
                top = ceiling["readings_per_s"]
                out.append(
                    f"  - the reference server alone (1 POST in flight) stores {top:,.0f} "
                    f"readings/s at B={size}: no one-in-flight client can beat "
                    f"{top / naive['readings_per_s']:.1f}× the baseline here; metersync with 1 "
                    f"in flight reaches {single['readings_per_s'] / top:.0%} of that ceiling"
                )
        if ours and naive:
            out.append(
                f"  - the default window (2 POSTs in flight): "
                f"{ours['readings_per_s'] / naive['readings_per_s']:.1f}× the naive port "
                "(not like for like: the naive port has one POST in flight)"
            )
        if ours:
            per, limit = ours["statements_per_100k"], ours["statement_target_per_100k"]
            out.append(
                f"- e2e B={size}: statements per 100,000 readings ≤ {limit:,}: "
                f"{per:,.0f} — {_verdict(per <= limit)}"
            )
    if rss:
        peak = max(r["peak_rss_mb"] for r in rss)
        sizes = ", ".join(f"{r['readings']:,}: {r['peak_rss_mb']:.0f} MB" for r in rss)
        out.append(f"- peak RSS draining a backlog ≤ 250 MB ({sizes}) — {_verdict(peak <= 250)}")
        if len(rss) > 1:
            lo, hi = min(r["peak_rss_mb"] for r in rss), peak
            flat = hi - lo <= max(0.15 * lo, 20)
            out.append(
                f"- peak RSS independent of backlog size: spread {hi - lo:.0f} MB — "
                f"{_verdict(flat)}"
            )
    return out


def summarize(path: Path, rss_path: Path | None = None) -> str:
    """The whole markdown summary of a pytest-benchmark JSON file (and an optional RSS file)."""
    data = json.loads(path.read_text())
    benchmarks = [b for b in data.get("benchmarks", []) if b.get("stats")]
    machine = data.get("machine_info", {})
    lines = [
        f"## metersync benchmarks ({machine.get('cpu', {}).get('brand_raw', 'cpu?')}, "
        f"{machine.get('python_version', '')}, {data.get('datetime', '')[:19]})",
        "",
    ]
    table, ratios = group_tables(benchmarks)
    e2e_lines, e2e = e2e_table(benchmarks)
    rss_lines, rss = rss_table(rss_path)
    engine_lines = [
        line
        for b in benchmarks
        if b.get("extra_info", {}).get("group") == "engine"
        for line in ["### engine against a zero-cost Client System (bench_engine.py)", "",
                     b["extra_info"]["table"], ""]
    ]  # fmt: skip
    lines += table + e2e_lines + engine_lines + rss_lines
    found = targets(ratios, e2e, rss)
    if found:
        lines += ["### targets", "", *found, ""]
    if not benchmarks:
        lines.append("(no benchmark results in this file)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--rss", type=Path, default=None, help="rss.py --json output")
    args = parser.parse_args(argv)
    if not args.json.exists():
        print(f"no benchmark results at {args.json}", file=sys.stderr)
        return 1
    print(summarize(args.json, args.rss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
