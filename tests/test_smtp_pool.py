"""The pool of kept-open SMTP connections, against a real aiosmtpd server: reuse, RSET
after a refusal, a fresh connection after 421, after `max_messages`, after `idle_timeout`,
and when the server dropped a pooled connection."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import AsyncIterator

import pytest

from core.capture import SmtpController
from core.mailer import DeliveryError, Mailer, OutgoingEmail, SmtpTarget
from tests.harness import SmtpSink


def email(to: str) -> object:
    return OutgoingEmail(
        sender="Medical Information <medinfo@pharma.example>", to=to, subject=f"Hello {to}",
        html="<p>Hi</p>", text="Hi\n", date=datetime.now(timezone.utc),
    ).to_mime()


class Server:
    def __init__(self) -> None:
        self.sink = SmtpSink()
        self.controller = SmtpController(self.sink, hostname="127.0.0.1", port=0)  # the kernel picks a free port
        self.controller.start()
        self.port = self.controller.port

    def restart(self) -> None:
        """Stop and start again on the same port: every open session is dropped."""
        self.controller.stop()
        self.controller = SmtpController(self.sink, hostname="127.0.0.1", port=self.port)
        self.controller.start()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = Server()
    yield running
    running.controller.stop()


async def send(mailer: Mailer, to: str) -> str:
    return await mailer.send(email(to), envelope_from="bounce@pharma.example", recipient=to)  # type: ignore[arg-type]


async def test_one_connection_serves_many_emails_and_survives_a_refusal(server: Server) -> None:
    server.sink.reject["gone@clinic.example"] = "550 5.1.1 No such user"
    mailer = Mailer(SmtpTarget.from_url(f"smtp://127.0.0.1:{server.port}"), pool_size=1)
    await send(mailer, "a@clinic.example")
    with pytest.raises(DeliveryError) as refused:
        await send(mailer, "gone@clinic.example")
    assert refused.value.code == 550
    await send(mailer, "b@clinic.example")
    await mailer.aclose()
    assert mailer.connects == 1, "RSET after the refusal kept the connection"
    assert [e[1] for e in server.sink.envelopes] == [["a@clinic.example"], ["b@clinic.example"]]


async def test_a_421_gets_a_fresh_connection(server: Server) -> None:
    server.sink.defer["busy@clinic.example"] = 1
    server.sink.defer_reply["busy@clinic.example"] = "421 4.7.0 Too many connections, closing"
    mailer = Mailer(SmtpTarget.from_url(f"smtp://127.0.0.1:{server.port}"), pool_size=1)
    with pytest.raises(DeliveryError):
        await send(mailer, "busy@clinic.example")
    await send(mailer, "busy@clinic.example")
    await mailer.aclose()
    assert mailer.connects == 2


async def test_a_connection_is_replaced_after_max_messages(server: Server) -> None:
    mailer = Mailer(SmtpTarget.from_url(f"smtp://127.0.0.1:{server.port}"), pool_size=1, max_messages=2)
    for index in range(5):
        await send(mailer, f"dr{index}@clinic.example")
    await mailer.aclose()
    assert mailer.connects == 3 and len(server.sink.messages) == 5


async def test_an_idle_connection_is_not_reused(server: Server) -> None:
    mailer = Mailer(SmtpTarget.from_url(f"smtp://127.0.0.1:{server.port}"), pool_size=1, idle_timeout=0.0)
    await send(mailer, "a@clinic.example")
    await send(mailer, "b@clinic.example")
    await mailer.aclose()
    assert mailer.connects == 2


async def test_a_pooled_connection_dropped_by_the_server_is_reconnected_on_the_spot(server: Server) -> None:
    mailer = Mailer(SmtpTarget.from_url(f"smtp://127.0.0.1:{server.port}"), pool_size=1)
    await send(mailer, "a@clinic.example")
    server.restart()
    await send(mailer, "b@clinic.example")
    await mailer.aclose()
    assert [e[1] for e in server.sink.envelopes] == [["a@clinic.example"], ["b@clinic.example"]]
    assert mailer.connects == 2
