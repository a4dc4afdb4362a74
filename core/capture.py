"""The embedded SMTP capture server of `trigger-email dev`: a real aiosmtpd server that keeps
every message it receives as a `.eml` file, so the dev outbox survives restarts."""

from __future__ import annotations

import os
import secrets
import time
import socket
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class SmtpController(Controller):
    """aiosmtpd's threaded Controller that may listen on port 0: the kernel picks a free port
    while binding, and `port` is read back from the listening socket (no probe-then-bind race)."""

    def __init__(self, handler: Any, hostname: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        super().__init__(handler, hostname=hostname, port=port, **kwargs)

    def _trigger_server(self) -> None:
        if self.server is not None and self.server.sockets:
            self.port = int(self.server.sockets[0].getsockname()[1])
        super()._trigger_server()


def listening_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 128) -> socket.socket:
    """A TCP socket already bound and listening (port 0: the kernel picks one); hand it to a
    server (uvicorn `sockets=`, a child process's `--fd`) so nobody can take the port meanwhile."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


class _Keeper:
    def __init__(self, directory: Path):
        self.directory = directory

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode()
        header = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}.eml"
        temporary = self.directory / f".{name}.tmp"
        temporary.write_bytes(header + raw)
        os.replace(temporary, self.directory / name)
        return "250 Message accepted for delivery"


class CaptureServer:
    def __init__(self, directory: Path, *, host: str = "127.0.0.1", port: int = 0):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.controller = SmtpController(_Keeper(directory), hostname=host, port=port)

    def start(self) -> str:
        self.controller.start()
        return f"smtp://{self.controller.hostname}:{self.controller.port}"

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[dict[str, Any]]:
        return read_captured(self.directory)


def read_captured(directory: Path) -> list[dict[str, Any]]:
    """Captured messages, oldest first, as the dev outbox shows them."""
    result = []
    for path in sorted(directory.glob("*.eml")):
        parsed: EmailMessage = message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[assignment]
        html_part = parsed.get_body(("html",))
        text_part = parsed.get_body(("plain",))
        result.append(
            {
                "id": path.stem,
                "to": [address.strip() for address in str(parsed.get("X-Envelope-To", parsed.get("To", ""))).split(",") if address.strip()],
                "from": str(parsed.get("From", "")),
                "envelope_from": str(parsed.get("X-Envelope-From", "")),
                "subject": str(parsed.get("Subject", "")),
                "message_id": str(parsed.get("Message-ID", "")),
                "date": str(parsed.get("Date", "")),
                "headers": {name: str(value) for name, value in parsed.items() if not name.startswith("X-Envelope-")},
                "html": html_part.get_content() if html_part else "",
                "text": text_part.get_content() if text_part else "",
            }
        )
    return result
