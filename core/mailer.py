"""SMTP delivery with aiosmtplib: MIME building, `SMTP_URL` parsing, and the classification
of SMTP answers into what the sender does next (retry, try the next address, give up)."""

from __future__ import annotations

import asyncio
import time
import logging
from dataclasses import dataclass, field
from datetime import datetime
import binascii
import secrets
from email.policy import Compat32
from email.header import Header
from email.message import Message
from email.encoders import encode_base64
from email.mime.base import MIMEBase
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, AsyncIterator, Awaitable, Callable, Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib

log = logging.getLogger(__name__)

class WirePolicy(Compat32):
    """compat32 as it goes on the wire. A header that is printable ASCII and fits on one
    line is written as it is: compat32 would run it through `Header.encode`, which returns
    the same line for a great deal more work, a dozen times per email."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        if (
            isinstance(value, str) and value.isascii() and value.isprintable()
            and len(name) + len(value) + 2 <= (self.max_line_length or 78)
        ):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


HEADER_POLICY = WirePolicy(linesep="\r\n", max_line_length=998)
"""CRLF for SMTP. Python folds a long Subject right after `Subject:`, which some clients
show with a leading space; RFC 5322 allows 998 characters a line, so fold only beyond that."""

_SCHEMES = {"smtp": (25, False, False), "smtp+starttls": (587, False, True), "smtps": (465, True, False)}


@dataclass(frozen=True)
class SmtpTarget:
    hostname: str
    port: int
    use_tls: bool = False
    start_tls: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0) -> "SmtpTarget":
        """`smtp://host:25`, `smtp+starttls://user:pw@host:587`, `smtps://user:pw@host:465`."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"SMTP_URL: expected smtp://, smtps:// or smtp+starttls://, got {url!r}")
        default_port, use_tls, start_tls = _SCHEMES[parts.scheme]
        return cls(
            hostname=parts.hostname or "127.0.0.1",
            port=parts.port or default_port,
            use_tls=use_tls,
            start_tls=start_tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            timeout=timeout,
        )


@dataclass
class OutgoingEmail:
    sender: str
    to: str
    subject: str
    html: str
    text: str
    date: datetime
    envelope_from: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(filename, content type, bytes): the email becomes multipart/mixed around the text."""

    def to_mime(self) -> Message:
        """multipart/alternative, text then HTML, quoted-printable UTF-8. Built with the
        compat32 classes: the modern header registry costs four times as much per email,
        which shows at hundreds of emails a second."""
        alternative = _multipart("alternative")
        message = _multipart("mixed") if self.attachments else alternative
        message["From"] = _address_header(self.sender)
        message["To"] = _address_header(self.to)
        message["Subject"] = _text_header(self.subject)
        message["Date"] = format_datetime(self.date)
        message["Message-ID"] = make_msgid(domain=_domain_of(self.sender))
        if self.reply_to:
            message["Reply-To"] = _address_header(self.reply_to)
        for name, value in self.headers.items():
            message[name] = _text_header(value)
        alternative.attach(_text_part("plain", self.text))
        alternative.attach(_text_part("html", self.html))
        if self.attachments:
            message.attach(alternative)
            for filename, content_type, data in self.attachments:
                message.attach(_attachment(filename, content_type, data))
        return message


def _attachment(filename: str, content_type: str, data: bytes) -> Message:
    maintype, _, subtype = content_type.partition("/")
    part = MIMEBase(maintype or "application", subtype or "octet-stream")
    part.set_payload(data)
    encode_base64(part)
    part.add_header("Content-Disposition", "attachment", filename=filename if filename.isascii() else ("utf-8", "", filename))
    return part


def _multipart(subtype: str) -> Message:
    """A multipart with its boundary in the Content-Type as built (`MIMEMultipart(boundary=)`
    writes the header, then parses it again to set the boundary)."""
    return MIMEBase("multipart", subtype, boundary=_boundary())


def _boundary() -> str:
    """`=_` cannot occur in a quoted-printable or base64 body, so the boundary needs no
    search through the parts (the generator's own search compiles a regex per email)."""
    return f"=_te_{secrets.token_hex(12)}"


def _text_part(subtype: str, text: str) -> Message:
    """A UTF-8 text part in quoted-printable, encoded by `binascii` (C) rather than the email
    package's character-by-character Python encoder: the same standard, a tenth of the time."""
    part = MIMENonMultipart("text", subtype, charset="utf-8")
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii"))
    return part


def _text_header(value: str) -> str | Header:
    return value if value.isascii() else Header(value, "utf-8")


@lru_cache(maxsize=256)
def address_of(value: str) -> str:
    """The address in `Name <address>`, cached: senders are a handful of strings, and the
    email package's parser is slow pure Python."""
    return parseaddr(value)[1]


def _domain_of(value: str) -> str | None:
    return address_of(value).rpartition("@")[2] or None


@lru_cache(maxsize=256)
def _address_header(value: str) -> str:
    """Cached: the senders are a handful of strings, parsed by a slow pure-Python parser."""
    name, address = parseaddr(value)
    return formataddr((name, address), charset="utf-8") if name else address


@dataclass(eq=False)
class DeliveryError(Exception):
    """`recipient_rejected`: 5xx on RCPT, the address is bad (try the next one).
    `transient`: 4xx or no connection, try again later. `permanent`: any other 5xx.
    What the sender then does is decided by `core.classify` from the code and text.
    Not frozen: an exception's traceback is written as it passes through context managers."""

    kind: Literal["recipient_rejected", "transient", "permanent"]
    code: int | None
    detail: str

    def __str__(self) -> str:
        return f"{self.code} {self.detail}" if self.code else self.detail


@dataclass(frozen=True)
class DkimSigner:
    """DKIM (RFC 6376) with dkimpy. The signature covers List-Unsubscribe and
    List-Unsubscribe-Post, as RFC 8058 asks, so one-click cannot be forged in transit."""

    domain: str
    selector: str
    private_key: bytes
    headers: tuple[str, ...] = (
        "From", "To", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version", "Content-Type",
        "List-Unsubscribe", "List-Unsubscribe-Post",
    )

    def sign(self, raw: bytes) -> bytes:
        import dkim

        present = {line.split(b":", 1)[0].strip().lower() for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if b":" in line}
        include = [name.encode() for name in self.headers if name.lower().encode() in present]
        signature = dkim.sign(
            raw, self.selector.encode(), self.domain.encode(), self.private_key,
            include_headers=include, canonicalize=(b"relaxed", b"relaxed"),
        )
        return signature + raw


@dataclass(eq=False)
class Slot:
    """One of a worker's `pool_size` places for an SMTP connection. `unrecorded` is the
    pending write of the outcome of the last email sent through this place (a connection
    replaced keeps its place): the next transaction here starts DATA only once it is done,
    so each place has at most one message past DATA without its outcome recorded."""

    unrecorded: asyncio.Future[Any] | None = None

    async def recorded(self) -> None:
        if self.unrecorded is not None and not self.unrecorded.done():
            await asyncio.wait([self.unrecorded])


class Stopping(Exception):
    """The worker is stopping: nothing of this message was handed to SMTP, put it back."""


class Ambiguous(Exception):
    """The message content went to the server and no answer came back: it may have been
    accepted. Never resent automatically (RFC 1047); an operator settles it."""


Started = Callable[[], Awaitable[None]]


class Mailer:
    """Sends over a small pool of kept-open SMTP connections: a new TCP + TLS + EHLO per
    email would cost more than the email.

    A send is two steps, so the caller can claim the message only once a connection is in
    hand: `connection()` waits for a pooled connection, `transact()` drives MAIL, RCPT and
    DATA and calls `started()` right before DATA, the first moment the server could take the
    message. `stop()` (a worker shutting down) makes both refuse new work with `Stopping`
    and wakes the jobs waiting for a connection; a transaction past `started()` is finished,
    even when its task is cancelled, for up to `grace` seconds.

    Pooled connections are reused for at most `max_messages` emails and are not reused after
    `idle_timeout` seconds unused (servers drop idle sessions); a refused transaction is
    followed by RSET so the connection serves the next email; a 421 (the server closing the
    session) or a dropped connection is replaced by a new one, and a pooled connection found
    dead at MAIL FROM is reconnected once on the spot."""

    def __init__(
        self, target: SmtpTarget, *, pool_size: int = 4, dkim: DkimSigner | None = None, grace: float = 20.0,
        max_messages: int = 100, idle_timeout: float = 60.0,
    ):
        self.target = target
        self.dkim = dkim
        self.grace = grace
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self.connects = 0
        """Connections opened so far (the benchmark and tests read it)."""
        self._closing: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self.in_transaction: set[asyncio.Task[Any]] = set()
        """Tasks past `started()`: what a stopping worker waits for."""
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._slots: asyncio.Queue[Slot] = asyncio.Queue()
        for _ in range(pool_size):
            self._slots.put_nowait(Slot())
        self._waiting: set[asyncio.Task[Any]] = set()

    def stop(self) -> None:
        """Refuse new transactions; jobs waiting for a connection give up with `Stopping`."""
        self.stopping = True
        for task in list(self._waiting):
            task.cancel(STOPPING)

    async def _client(self) -> aiosmtplib.SMTP:
        now = time.monotonic()
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if not client.is_connected:
                continue
            if getattr(client, "te_sent", 0) >= self.max_messages or now - getattr(client, "te_used", now) > self.idle_timeout:
                self._retire(client)
                continue
            return client
        client = aiosmtplib.SMTP(
            hostname=self.target.hostname,
            port=self.target.port,
            use_tls=self.target.use_tls,
            start_tls=self.target.start_tls,
            username=self.target.username,
            password=self.target.password,
            timeout=self.target.timeout,
        )
        await client.connect()
        self.connects += 1
        client.te_sent = 0  # type: ignore[attr-defined]
        client.te_used = now  # type: ignore[attr-defined]
        return client

    def _retire(self, client: aiosmtplib.SMTP) -> None:
        """Say QUIT to a connection that has served its time, without waiting for it."""

        async def quit_politely() -> None:
            try:
                await asyncio.wait_for(client.quit(), timeout=5)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                client.close()

        task = asyncio.ensure_future(quit_politely())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """A connected client from the pool; DeliveryError (transient) when none can be made,
        Stopping when the worker is stopping. An exception inside drops the connection."""
        if self.stopping:
            raise Stopping()
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            slot = await self._slots.get()
        except asyncio.CancelledError as exc:
            if exc.args == (STOPPING,):
                task.uncancel()
                raise Stopping() from None
            raise
        finally:
            self._waiting.discard(task)
        try:
            if self.stopping:
                raise Stopping()
            try:
                client = await self._client()
            except aiosmtplib.SMTPResponseException as exc:
                # The server refused the session (its greeting, EHLO or AUTH): its code and
                # text go to the classifier like any answer. Still retried later: no message
                # was claimed yet.
                raise DeliveryError("transient", exc.code, exc.message) from None
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                raise DeliveryError("transient", None, f"{type(exc).__name__}: {exc}") from None
            client.te_slot = slot  # type: ignore[attr-defined]
            try:
                yield client
            except DeliveryError:
                # `transact` closed the connection if it was unusable, else reset it.
                self._release(client)
                raise
            except BaseException:
                self._discard(client)
                raise
            self._release(client)
        finally:
            self._slots.put_nowait(slot)

    def wire_bytes(self, message: Message) -> bytes:
        raw = message.as_bytes(policy=HEADER_POLICY)
        return self.dkim.sign(raw) if self.dkim is not None else raw

    async def transact(
        self, client: aiosmtplib.SMTP, raw: bytes, *, envelope_from: str, recipient: str, started: Started | None = None
    ) -> str:
        """MAIL, RCPT, `started()`, DATA; returns the server's answer. Raises DeliveryError for
        an answer that refuses, Stopping before DATA when the worker stops, Ambiguous when the
        content was sent and no answer came. After any of these the connection is dropped."""
        try:
            answer = await self._transact(client, raw, envelope_from=envelope_from, recipient=recipient, started=started)
        except DeliveryError as error:
            if error.code is None or error.code == 421 or not await self._reset(client):
                self._discard(client)
            raise
        except BaseException:
            self._discard(client)
            raise
        client.te_sent = getattr(client, "te_sent", 0) + 1  # type: ignore[attr-defined]
        return answer

    async def _reset(self, client: aiosmtplib.SMTP) -> bool:
        """RSET after a refused transaction, so the connection can serve the next email."""
        if not client.is_connected:
            return False
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            return False
        client.te_sent = getattr(client, "te_sent", 0) + 1  # type: ignore[attr-defined]
        return True

    async def _transact(
        self, client: aiosmtplib.SMTP, raw: bytes, *, envelope_from: str, recipient: str, started: Started | None
    ) -> str:
        if self.stopping:
            raise Stopping()
        try:
            options = [f"SIZE={len(raw)}"] if client.supports_extension("size") else []
            try:
                await client.mail(envelope_from, options=options)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                # A pooled connection the server dropped while idle: nothing was sent yet,
                # so reconnect once and go on.
                client.close()
                await client.connect()
                self.connects += 1
                client.te_sent = 0  # type: ignore[attr-defined]
                await client.mail(envelope_from, options=options)
            await client.rcpt(recipient)
        except aiosmtplib.SMTPRecipientRefused as exc:
            kind = "recipient_rejected" if exc.code >= 500 else "transient"
            raise DeliveryError(kind, exc.code, exc.message) from None
        except aiosmtplib.SMTPResponseException as exc:
            kind = "transient" if 400 <= exc.code < 500 else "permanent"
            raise DeliveryError(kind, exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            raise DeliveryError("transient", None, f"{type(exc).__name__}: {exc}") from None
        if self.stopping:
            raise Stopping()
        if started is not None:
            await started()
        task = asyncio.current_task()
        assert task is not None
        self.in_transaction.add(task)
        try:
            response = await self._data(client, raw, task)
        finally:
            self.in_transaction.discard(task)
        return response.message

    async def _data(self, client: aiosmtplib.SMTP, raw: bytes, task: asyncio.Task[Any]) -> aiosmtplib.SMTPResponse:
        data = asyncio.ensure_future(client.data(raw))
        try:
            await asyncio.shield(data)
        except asyncio.CancelledError:
            if not data.done():
                # Cancelled inside DATA: the server may be taking the message. Let the answer
                # come for up to `grace`; then the outcome is known and recorded normally.
                await asyncio.wait({data}, timeout=self.grace)
            if not data.done():
                data.cancel()
                raise
            task.uncancel()
        except Exception:  # noqa: BLE001 - classified below from the finished future
            pass
        try:
            return data.result()
        except aiosmtplib.SMTPResponseException as exc:
            kind = "transient" if 400 <= exc.code < 500 else "permanent"
            raise DeliveryError(kind, exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            raise Ambiguous(f"no answer after DATA: {type(exc).__name__}: {exc}") from None

    async def send(self, message: Message, *, envelope_from: str, recipient: str) -> str:
        """Deliver `message` in one call; returns the server's answer or raises DeliveryError."""
        async with self.connection() as client:
            try:
                return await self.transact(client, self.wire_bytes(message), envelope_from=envelope_from, recipient=recipient)
            except Ambiguous as exc:
                raise DeliveryError("transient", None, str(exc)) from None

    def _release(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None and client.is_connected:
            client.te_used = time.monotonic()  # type: ignore[attr-defined]
            self._idle.put_nowait(client)

    def _discard(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None and client.is_connected:
            client.close()

    async def aclose(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


STOPPING = "trigger-email: worker stopping"
"""The cancel message `Mailer.stop()` gives the jobs it wakes."""

