"""A minimal aiosmtpd sink in its own process, so the server's parsing does not compete
with the client for the same interpreter: `python bench/smtp_sink.py [PORT] [--times]`.

It listens on PORT (default 0: a port the kernel picks) and prints `ready PORT` once
listening. With `--times` it prints `<unix time> <Subject>` for every message accepted, the
moment it accepts it (the end-to-end latency benchmark reads those lines)."""

from __future__ import annotations

import asyncio
import re
import sys
import time

from aiosmtpd.smtp import SMTP, Envelope, Session

SUBJECT = re.compile(rb"^Subject: ?(.*)$", re.MULTILINE | re.IGNORECASE)


class Count:
    received = 0
    times = False

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        Count.received += 1
        if Count.times:
            content = envelope.original_content or envelope.content or b""
            raw = content if isinstance(content, bytes) else content.encode()
            match = SUBJECT.search(raw.split(b"\r\n\r\n", 1)[0])
            subject = match.group(1).strip().decode(errors="replace") if match else ""
            sys.stdout.write(f"{time.time():.6f} {subject}\n")
            sys.stdout.flush()
        return "250 OK"


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Count()), "127.0.0.1", port)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    Count.times = "--times" in sys.argv
    asyncio.run(main(int(arguments[0]) if arguments else 0))
