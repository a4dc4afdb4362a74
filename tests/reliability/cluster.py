"""Real parts for the fault-injection scenarios: two `trigger-email serve` and two
`trigger-email worker` processes on PostgreSQL and a Redis server of their own, an SMTP
server whose behaviour a scenario changes mid-run, and a CRM that records what it received.

Every listening socket is bound here first and handed over (serve gets `--fd`, the SMTP
server and the CRM listen on port 0, Redis on a unix socket), so a restarted process gets
the same address back and no other process can take it in between.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session

from core.capture import SmtpController, listening_socket
from core.npi import make_npi

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
SECRET_KEY = "reliability-secret-key-of-at-least-32-chars"
HUBSPOT_SECRET = "reliability-hubspot-client-secret"
PORTAL = 62515
PUBLIC_URL = "https://trigger.pharma.example"
CAMPAIGN = "launch"


# --- Redis: a server of our own, on a unix socket, that a scenario flushes or restarts --------


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("tests/reliability start their own Redis: install redis-server (Debian: apt-get install redis-server)")
        self.binary = binary
        self.directory = Path(tempfile.mkdtemp(prefix="te-redis-"))  # short: unix socket paths are limited to 107 bytes
        self.socket = self.directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.directory / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                probe.connect(str(self.socket))
                probe.sendall(b"PING\r\n")
                return probe.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(self.socket))
            client.sendall(" ".join(words).encode() + b"\r\n")
            return client.recv(4096)

    def flush(self) -> None:
        assert self.command("FLUSHALL").startswith(b"+OK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- SMTP: a real server whose answers change during a scenario ---------------------------------


@dataclass
class Inbox:
    """What the SMTP server accepted, and how it behaves now:
    `mode` "ok", "421" / "451" (every RCPT answered so), "closed" (connections dropped before
    the greeting); `reject` addresses get 550 5.1.1; `delay` seconds spent in DATA."""

    received: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "ok"
    reject: set[str] = field(default_factory=set)
    delay: float = 0.0
    refused: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        address = address.lower()
        if self.mode == "421":
            self.refused["421"] += 1
            return "421 4.3.2 Service not available, closing transmission channel"
        if self.mode == "451":
            self.refused["451"] += 1
            return "451 4.3.0 Mail server temporarily rejected message"
        if address in self.reject:
            self.refused["550"] += 1
            return "550 5.1.1 The email account that you tried to reach does not exist"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode()
        head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        headers = {}
        for line in head.split("\r\n"):
            name, _, value = line.partition(":")
            if value and not line.startswith((" ", "\t")):
                headers.setdefault(name.strip().lower(), value.strip())
        with self.lock:
            for recipient in envelope.rcpt_tos:
                self.received.append({"to": recipient, "message_id": headers.get("message-id"), "at": time.time()})
        return "250 2.0.0 Message accepted"

    def count_by_recipient(self) -> Counter:
        with self.lock:
            return Counter(item["to"] for item in self.received)


class _DroppingSMTP(SMTP):
    def __init__(self, handler: Inbox, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self._inbox = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._inbox.mode == "closed":
            self._inbox.refused["closed"] += 1
            transport.abort()  # type: ignore[attr-defined]


class SmtpServer(SmtpController):
    def __init__(self, inbox: Inbox):
        super().__init__(inbox, hostname="127.0.0.1", port=0)
        self.inbox = inbox

    def factory(self) -> SMTP:
        return _DroppingSMTP(self.inbox, hostname="mx.reliability.example")

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


# --- a CRM that records activity batches, answers as told, and can lose its reply -------------------


class FakeCrm:
    """The generic webhook write-back's receiver, on a raw HTTP/1.1 socket so that it can lose
    a reply for real: it records the batch, then closes the connection without answering.

    `answers` is consumed in order: ("429", seconds) answers 429 with Retry-After, ("500",)
    answers 500, ("lost",) records the batch and drops the connection; then 200. Like any
    Standard Webhooks receiver it drops a batch whose `webhook-id` it has already stored."""

    def __init__(self) -> None:
        self.answers: list[tuple[Any, ...]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.stored: dict[int, dict[str, Any]] = {}
        self.seen_ids: set[str] = set()
        self.duplicates_dropped = 0
        self.lock = threading.Lock()
        self.socket = listening_socket()
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/crm/activities"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FakeCrm":
        self.thread.start()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, sock=self.socket))
        self.server = server
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if value:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra = self._answer(headers, body)
                if status == 0:  # the reply is lost
                    writer.transport.abort()
                    return
                payload = b'{"ok": true}'
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n{extra}\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        with self.lock:
            answer = self.answers.pop(0) if self.answers else ("200",)
            data = json.loads(body)
            self.deliveries.append({"id": headers.get("webhook-id"), "answer": answer[0], "items": [a["id"] for a in data["data"]]})
            if answer[0] == "429":
                return 429, f"Retry-After: {answer[1]}\r\n"
            if answer[0] == "500":
                return 500, ""
            delivery = headers.get("webhook-id", "")
            if delivery in self.seen_ids:
                self.duplicates_dropped += 1
            else:
                self.seen_ids.add(delivery)
                for activity in data["data"]:
                    if activity["id"] in self.stored:
                        self.stored[activity["id"]]["times"] += 1
                    else:
                        self.stored[activity["id"]] = {**activity, "times": 1}
            return (0, "") if answer[0] == "lost" else (200, "")


# --- the directory and the config the processes run with -----------------------------------------


def hcp_npis(count: int) -> list[str]:
    return [make_npi(str(300000000 + index)) for index in range(count)]


def directory_csv(path: Path, count: int) -> dict[str, str]:
    """`count` HCPs, each with an address, every fifth with a second one; address → NPI."""
    owners = {}
    lines = ["npi,first_name,last_name,credential,specialty,state,email"]
    for index, npi in enumerate(hcp_npis(count)):
        addresses = [f"hcp{index}@clinic.example"] + ([f"hcp{index}@home.example"] if index % 5 == 0 else [])
        for address in addresses:
            lines.append(f"{npi},Hcp,Number{index},MD,Pulmonary Disease,NJ,{address}")
            owners[address] = npi
    path.write_text("\n".join(lines) + "\n")
    return owners


def config_text(*, crm_url: str | None = None) -> str:
    text = f"""
public_url: {PUBLIC_URL}
sender:
  from: "Medical Information <medinfo@pharma.example>"
  postal_address: "1 Main St, Springfield, NJ 07081"
campaigns:
  - id: {CAMPAIGN}
    subject: "New data for Dr. {{{{ hcp.last_name }}}}"
    html: "<p>Dear Dr. {{{{ hcp.last_name }}}}, <a href=\\"https://pharma.example/data\\">the data</a></p>"
    cooldown: 30d
triggers:
  - {{from: hubspot, on: record_change, where: {{object: contact, field: npi}}, send: {CAMPAIGN}}}
crm:
  hubspot:
    access_token: pat-na1-00000000-0000-0000-0000-000000000000
    client_secret: {HUBSPOT_SECRET}
    portal_id: {PORTAL}
    npi_property: npi
"""
    if crm_url:
        text += f"""  webhook: {{url: "{crm_url}", secret: "whsec_{base64.b64encode(b'reliability crm secret of 32 b.').decode()}", batch_size: 20}}
  writeback: webhook
"""
    return text


def hubspot_event(event_id: int, contact: int, npi: str, attempt: int = 0) -> dict[str, Any]:
    """A HubSpot `contact.propertyChange` event: the contact's NPI property was set."""
    return {
        "eventId": event_id, "subscriptionId": 2141542, "portalId": PORTAL, "appId": 1160452,
        "occurredAt": 1767603540000, "subscriptionType": "contact.propertyChange", "attemptNumber": attempt,
        "objectId": contact, "propertyName": "npi", "propertyValue": npi, "changeSource": "CRM_UI",
    }


def hubspot_headers(body: bytes, at: float | None = None) -> dict[str, str]:
    """HubSpot's v3 signature over the public URL (what HubSpot signs)."""
    import hmac

    timestamp = str(int((at or time.time()) * 1000))
    uri = f"{PUBLIC_URL}/webhooks/hubspot"
    digest = hmac.new(HUBSPOT_SECRET.encode(), b"POST" + uri.encode() + body + timestamp.encode(), hashlib.sha256).digest()
    return {
        "Content-Type": "application/json", "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": timestamp,
    }


# --- the processes -----------------------------------------------------------------------------------


class Cluster:
    """`serves` serve processes (each on a socket bound here, kept across restarts) and
    worker processes, configured only by the environment, as in production."""

    def __init__(self, workdir: Path, *, database_url: str, redis: RedisServer, smtp_url: str, config: str,
                 serves: int = 2, **env: str):
        self.workdir = workdir
        config_file = workdir / "trigger-email.yaml"
        config_file.write_text(config)
        self.env = {
            **os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis.url, "SMTP_URL": smtp_url,
            "SECRET_KEY": SECRET_KEY, "TRIGGER_EMAIL_CONFIG": str(config_file), "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json", "SMTP_TIMEOUT": "10", "PYTHONPATH": str(ROOT), **env,
        }
        self.listeners = [listening_socket(backlog=512) for _ in range(serves)]
        self.urls = [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in self.listeners]
        self.serves: list[subprocess.Popen[bytes] | None] = [None] * serves
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def _spawn(self, name: str, command: list[str], **options: Any) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "trigger_email", *command], cwd=ROOT, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, **options)

    def start_serve(self, index: int) -> None:
        fd = self.listeners[index].fileno()
        self.serves[index] = self._spawn(f"serve{index}", ["serve", "--fd", str(fd)], pass_fds=(fd,))

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn("worker", ["worker"])
        self.workers.append(worker)
        return worker

    async def start(self, workers: int = 2) -> "Cluster":
        for index in range(len(self.serves)):
            self.start_serve(index)
        for _ in range(workers):
            self.start_worker()
        await self.wait_healthy()
        return self

    async def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            for url in self.urls:
                while True:
                    try:
                        if (await client.get(f"{url}/health")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise AssertionError(f"serve at {url} not healthy after {timeout} s:\n{self.tail()}")
                    await asyncio.sleep(0.2)

    @staticmethod
    def stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def close(self) -> None:
        for process in [*self.serves, *self.workers]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.serves, *self.workers]:
            self.stop(process)
        for sock in self.listeners:
            sock.close()

    def tail(self, lines: int = 30) -> str:
        out = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.5) -> float:
    """Poll `check` until true; the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(every)
    return time.monotonic() - start


# --- PgBouncer in transaction mode, on a unix socket of its own ---------------------------------------


class PgBouncer:
    """PgBouncer (`pool_mode = transaction`, 3 server connections per database) in front of
    the PostgreSQL of `database_url`, listening only on a unix socket in a directory of ours."""

    def __init__(self, database_url: str):
        from urllib.parse import urlsplit

        binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
        if binary is None:
            raise RuntimeError("the PgBouncer scenario needs pgbouncer (Debian: apt-get install pgbouncer)")
        target = urlsplit(database_url)
        self.database = target.path.lstrip("/")
        self.user = target.username or "postgres"
        self.directory = Path(tempfile.mkdtemp(prefix="te-pgb-"))
        self.directory.chmod(0o777)  # pgbouncer refuses to run as root: it runs as the database user then
        (self.directory / "users.txt").write_text(f'"{self.user}" ""\n')
        password = f" password={target.password}" if target.password else ""
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            f"[databases]\n* = host={target.hostname or '127.0.0.1'} port={target.port or 5432}{password}\n"
            f"[pgbouncer]\nlisten_addr =\nunix_socket_dir = {self.directory}\nlisten_port = 6432\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\npool_mode = transaction\n"
            "default_pool_size = 3\nmax_client_conn = 500\n"
        )
        for path in self.directory.iterdir():
            path.chmod(0o644)
        command = [binary, *(["-u", self.user] if os.geteuid() == 0 else []), str(config)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (self.directory / ".s.PGSQL.6432").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {self.process.stdout.read().decode() if self.process.stdout else ''}")
            time.sleep(0.05)
        self.url = f"postgresql://{self.user}@/{self.database}?host={self.directory}&port=6432"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        shutil.rmtree(self.directory, ignore_errors=True)
