"""SMTP delivery with aiosmtplib: MIME building, `SMTP_URL` parsing, and the classification
of SMTP answers into what the sender does next (retry, try the next address, give up)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.encoders import encode_base64
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib

log = logging.getLogger(__name__)

HEADER_POLICY = policy.compat32.clone(linesep="\r\n", max_line_length=998)
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
        alternative = MIMEMultipart("alternative")
        message = MIMEMultipart("mixed") if self.attachments else alternative
        message["From"] = _address_header(self.sender)
        message["To"] = _address_header(self.to)
        message["Subject"] = _text_header(self.subject)
        message["Date"] = format_datetime(self.date)
        domain = parseaddr(self.sender)[1].rpartition("@")[2] or None
        message["Message-ID"] = make_msgid(domain=domain)
        if self.reply_to:
            message["Reply-To"] = _address_header(self.reply_to)
        for name, value in self.headers.items():
            message[name] = _text_header(value)
        alternative.attach(MIMEText(self.text, "plain", _UTF8))
        alternative.attach(MIMEText(self.html, "html", _UTF8))
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


_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP


def _text_header(value: str) -> str | Header:
    return value if value.isascii() else Header(value, "utf-8")


def _address_header(value: str) -> str:
    name, address = parseaddr(value)
    return formataddr((name, address), charset="utf-8") if name else address


@dataclass(frozen=True)
class DeliveryError(Exception):
    """`recipient_rejected`: 5xx on RCPT, the address is bad (try the next one).
    `transient`: 4xx or no connection, try again later. `permanent`: any other 5xx."""

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


class Mailer:
    """Sends over a small pool of kept-open SMTP connections: a new TCP + TLS + EHLO per
    email would cost more than the email."""

    def __init__(self, target: SmtpTarget, *, pool_size: int = 4, dkim: DkimSigner | None = None):
        self.target = target
        self.dkim = dkim
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._slots = asyncio.Semaphore(pool_size)

    async def _client(self) -> aiosmtplib.SMTP:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
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
        return client

    async def send(self, message: Message, *, envelope_from: str, recipient: str) -> str:
        """Deliver `message`; returns the server's answer or raises DeliveryError."""
        async with self._slots:
            client: aiosmtplib.SMTP | None = None
            try:
                client = await self._client()
                raw = message.as_bytes(policy=HEADER_POLICY)
                if self.dkim is not None:
                    raw = self.dkim.sign(raw)
                _errors, answer = await client.sendmail(envelope_from, [recipient], raw)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0] if exc.recipients else None
                code = refused.code if refused else None
                detail = refused.message if refused else str(exc)
                self._discard(client)
                kind = "recipient_rejected" if code and code >= 500 else "transient"
                raise DeliveryError(kind, code, detail) from None
            except aiosmtplib.SMTPResponseException as exc:
                self._discard(client)
                kind = "transient" if 400 <= exc.code < 500 else "permanent"
                raise DeliveryError(kind, exc.code, exc.message) from None
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                self._discard(client)
                raise DeliveryError("transient", None, f"{type(exc).__name__}: {exc}") from None
            self._release(client)
            return answer

    def _release(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None and client.is_connected:
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
