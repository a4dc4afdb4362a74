"""Trigger → email accepted by a local aiosmtpd: emails/s for one worker, against raw
aiosmtplib → aiosmtpd in the same run (target ratio ≥ 0.5), in its two usual forms: the
one-call `aiosmtplib.send()` (a connection per message) and one kept-open connection.

    python bench/bench_send.py [N]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (sys.path)
from common import backend, database_url, redis_url

import aiosmtplib

from config import Settings, parse_config
from core.clock import Clock
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
  connections: ${BENCH_CONNECTIONS:-4}
campaigns:
  - id: bench
    subject: "New data for {{ hcp.specialty }}"
    html: |
      <html><body><p>Dear Dr. {{ hcp.last_name }},</p><p>New phase III data are available.</p>
      <p><a href="https://pharma.example/a">Read</a> <a href="https://pharma.example/b">Dosing</a></p></body></html>
"""


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


async def main(count: int) -> None:
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
        config=parse_config(CONFIG, base=Path(".")),
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
    cpu = time.process_time()
    start = time.perf_counter()
    task = asyncio.create_task(worker.main())
    while await sent_count(rt) < len(npis):
        await asyncio.sleep(0.01)
    wall = time.perf_counter() - start
    ours = len(npis) / wall
    busy = (time.process_time() - cpu) / wall
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raw = await raw_baseline(smtp_url, len(npis))
    calls = await raw_send_calls(smtp_url, len(npis))
    print(f"backend: {backend(url)}, emails: {len(npis)}")
    print(f"trigger → email (one worker): {ours:.0f} emails/s, worker process CPU {busy:.0%} of one core")
    print(f"raw aiosmtplib.send() → aiosmtpd (a connection per message): {calls:.0f} emails/s, ratio {ours / calls:.2f} (target ≥ 0.5)")
    print(f"raw aiosmtplib → aiosmtpd (one kept-open connection): {raw:.0f} emails/s, ratio {ours / raw:.2f} (target ≥ 0.5)")
    sink.terminate()
    await rt.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
