"""A minimal aiosmtpd sink in its own process, so the server's parsing does not compete
with the client for the same interpreter: `python bench/smtp_sink.py PORT`."""

from __future__ import annotations

import asyncio
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session


class Count:
    received = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        Count.received += 1
        return "250 OK"


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Count()), "127.0.0.1", port)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
