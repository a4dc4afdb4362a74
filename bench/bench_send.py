"""Trigger → email accepted by a local aiosmtpd: emails/s for one worker, against raw
aiosmtplib → aiosmtpd in the same run (target ratio ≥ 0.5), in its two usual forms: the
one-call `aiosmtplib.send()` (a connection per message) and one kept-open connection.

    python bench/bench_send.py [N]
    python bench/bench_send.py [N] --authoring   # with A/B subjects and quiet hours on
    python bench/bench_send.py [N] --compare     # both, alternated, and the ratio (target ≥ 0.95)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import common  # noqa: F401  (sys.path)
from common import backend, database_url, redis_url

import aiosmtplib

from config import Settings, parse_config
from config.schema import Delivery
from core.clock import Clock, ManualClock
from core.demo import write_demo_csv
from core.directory import import_csv
from core.mailer import OutgoingEmail
from core.runtime import build_runtime
from core.schema import upgrade
from core.triggers import accept_trigger
from tests.harness import reset_database
from workers.settings import make_worker

CONFIG = """
public_url: https://trigger.pharma.example
sender: {from: "Medical Information <medinfo@pharma.example>", postal_address: "1 Main St, Springfield, NJ 07081"}
delivery:                     # a local sink: no receiving domain to be gentle with
  per_domain: {concurrency: 1000, rate: 1000000}
  providers: {}
  connections: ${BENCH_CONNECTIONS:-__CONNECTIONS__}
campaigns:
  - id: bench
    subject: "New data for {{ hcp.specialty }}"
    html: |
      <html><body><p>Dear Dr. {{ hcp.last_name }},</p><p>New phase III data are available.</p>
      <p><a href="https://pharma.example/a">Read</a> <a href="https://pharma.example/b">Dosing</a></p></body></html>
"""
CONFIG = CONFIG.replace("__CONNECTIONS__", str(Delivery().connections))  # the default, unless BENCH_CONNECTIONS
AUTHORING = CONFIG.replace(
    '    subject: "New data for {{ hcp.specialty }}"\n',
    '    subjects:\n'
    '      - {text: "New data for {{ hcp.specialty }}", weight: 1}\n'
    '      - {text: "Dr. {{ hcp.last_name }}, new data", weight: 1}\n'
    '    ab: {decide_after: 3d, metric: click_rate}\n',
) + """limits:
  quiet_hours: {from: "20:00", to: "07:00", days: [sat, sun]}
"""
NOON = datetime(2026, 1, 7, 18, 0, tzinfo=timezone.utc)
"""A Wednesday, 08:00 in Hawaii to 13:00 on the East Coast: outside every HCP's quiet hours,
so both runs send everything and the difference is the cost of the checks."""


async def sent_count(rt) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from core.db import messages

    async with rt.db.connect() as connection:
        return (await connection.execute(select(func.count()).where(messages.c.status == "sent"))).scalar_one()


def raw_message(index: int):  # type: ignore[no-untyped-def]
    return OutgoingEmail(
        sender="Medical Information <medinfo@pharma.example>", to=f"raw{index}@clinic.example",
        subject="New data", html="<p>Dear Dr. Doe</p>" * 5, text="Dear Dr. Doe\n" * 5, date=Clock().now(),
    ).to_mime()


async def raw_send_calls(smtp_url: str, count: int) -> float:
    """`aiosmtplib.send()`, the library's one-call API: connect, EHLO, send, QUIT each time."""
    port = int(smtp_url.rsplit(":", 1)[1])
    start = time.perf_counter()
    for index in range(count):
        await aiosmtplib.send(raw_message(index), hostname="127.0.0.1", port=port)
    return count / (time.perf_counter() - start)


async def raw_baseline(smtp_url: str, count: int) -> float:
    port = int(smtp_url.rsplit(":", 1)[1])
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await client.connect()
    start = time.perf_counter()
    for index in range(count):
        await client.send_message(raw_message(index))
    elapsed = time.perf_counter() - start
    await client.quit()
    return count / elapsed


async def main(count: int, mode: str = "plain") -> None:
    if mode == "compare":
        rates: dict[str, list[float]] = {"plain": [], "authoring": []}
        costs: dict[str, list[float]] = {"plain": [], "authoring": []}
        rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
        for round_ in range(rounds):
            for name in ("plain", "authoring") if round_ % 2 == 0 else ("authoring", "plain"):
                rate, cost = await run_once(count, name)
                rates[name].append(rate)
                costs[name].append(cost)
                print(f"round {round_ + 1}, {name}: {rate:.0f} emails/s, {cost * 1000:.2f} ms CPU per email", flush=True)
        plain, authoring = max(rates["plain"]), max(rates["authoring"])
        print(f"best of {rounds}: plain {plain:.0f} emails/s, with A/B subjects + quiet hours {authoring:.0f} emails/s, "
              f"ratio {authoring / plain:.3f} (target ≥ 0.95)")
        plain_cost, authoring_cost = min(costs["plain"]), min(costs["authoring"])
        print(f"worker CPU per email (least of {rounds}): plain {plain_cost * 1000:.2f} ms, with A/B + quiet hours "
              f"{authoring_cost * 1000:.2f} ms, ratio {plain_cost / authoring_cost:.3f} (less noisy on a shared machine)")
        return
    await run_once(count, mode, baselines=mode == "plain")


async def run_once(count: int, mode: str, *, baselines: bool = False) -> tuple[float, float]:
    """(emails/s, worker CPU seconds per email)"""
    url = database_url("send")
    await reset_database(url)
    redis, _server = redis_url()
    sink = subprocess.Popen([sys.executable, str(Path(__file__).with_name("smtp_sink.py")), "0"], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    ready, port = sink.stdout.readline().split()  # "ready PORT": the sink bound a port the kernel picked
    assert ready == "ready"
    smtp_url = f"smtp://127.0.0.1:{port}"
    rt = await build_runtime(
        Settings(database_url=url, redis_url=redis, smtp_url=smtp_url, secret_key="bench-secret-key-of-at-least-32-characters"),
        config=parse_config(AUTHORING if mode == "authoring" else CONFIG, base=Path(".")),
        clock=None if baselines else ManualClock(NOON),
    )
    await upgrade(rt.db)
    await rt.queue.redis.flushdb()  # type: ignore[union-attr]
    directory = write_demo_csv(Path(common.tempfile.mkdtemp()) / "d.csv", count)
    await import_csv(rt.db, directory, now=rt.clock.now())
    from core.demo import demo_rows

    npis = list(dict.fromkeys(row[0] for row in demo_rows(count)))[:count]
    for npi in npis:
        await accept_trigger(rt, npi=npi, campaign_id="bench")
    worker = make_worker(rt, handle_signals=False)
    print(f"sending {len(npis)} triggers…", flush=True)
    cpu = time.process_time()
    start = time.perf_counter()
    task = asyncio.create_task(worker.main())
    while await sent_count(rt) < len(npis):
        await asyncio.sleep(0.1)  # the poll is counted in the process CPU: keep it rare
    wall = time.perf_counter() - start
    ours = len(npis) / wall
    busy = (time.process_time() - cpu) / wall
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    try:
        await worker.close()  # let the cancelled jobs finish before this run's Redis goes away
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - they were cancelled on purpose
        pass
    print(f"backend: {backend(url)}, emails: {len(npis)}, mode: {mode}")
    print(f"trigger → email (one worker): {ours:.0f} emails/s, worker process CPU {busy:.0%} of one core")
    if baselines:
        raw = await raw_baseline(smtp_url, len(npis))
        calls = await raw_send_calls(smtp_url, len(npis))
        print(f"raw aiosmtplib.send() → aiosmtpd (a connection per message): {calls:.0f} emails/s, ratio {ours / calls:.2f} (target ≥ 0.5)")
        print(f"raw aiosmtplib → aiosmtpd (one kept-open connection): {raw:.0f} emails/s, ratio {ours / raw:.2f} (target ≥ 0.5)")
    sink.terminate()
    await rt.aclose()
    return ours, busy * wall / len(npis)


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    chosen = "compare" if "--compare" in sys.argv else "authoring" if "--authoring" in sys.argv else "plain"
    asyncio.run(main(int(arguments[0]) if arguments else 1000, chosen))
