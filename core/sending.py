"""Delivering one message row: hold an SMTP connection, claim the row, compose, send, record.

A message moves `queued → sending → sent | failed` (or `unknown`). It stays `queued` until a
worker holds an SMTP connection for it; only then is it claimed with a conditional UPDATE
(`sending`, a fresh `claim_seq`, a lease `claimed_until` that the worker renews while it is
alive). Right before DATA, the first moment the server could take the message, the worker
records `smtp_started_at`. From that:

- a worker that stops (SIGTERM, a cancelled job) before that moment puts the row back to
  `queued` at once; one that dies (SIGKILL) lets its lease run out, and the sweep puts the row
  back (`claim_lease` seconds, 15 by default);
- a transaction past that moment is finished within the shutdown grace; one cut off with no
  answer (connection lost or timed out after DATA, or a worker killed inside DATA) becomes
  `unknown`: it may have been delivered, so it is never resent automatically, its trigger
  ends `unknown`, and `trigger-email messages resolve ID sent|resend` settles it.

An unexpected error while preparing a claimed message (composing, signing, the database) is
retried with backoff up to `send_max_attempts`, then the message ends `failed` with the error.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign
from core.attachments import gather as gather_attachments
from core.compose import compose
from core.db import engagement_events, messages, new_id, triggers
from core.decisions import pick_address
from core.directory import mark_address
from core.classify import classify
from core.domains import Hold, group_of, limiter_of, paused_domains, record_block
from core.errors import describe_error
from core.mailer import Ambiguous, DeliveryError, Stopping
from core.outbox import record_activity
from core.metrics import BOUNCES, MESSAGES, SEND_SECONDS
from core.queue import SEND_MESSAGE
from core.runtime import Runtime

log = logging.getLogger(__name__)


class ClaimLost(Exception):
    """Our claim on the message expired and was released (this worker stalled past its
    lease): someone else may be sending it, so this worker must not."""


_MARK_SENT = (
    update(messages)
    .where(
        messages.c.id == bindparam("message"), messages.c.status.in_(("sending", "unknown")),
        messages.c.claim_seq == bindparam("claim"),
    )
    .values(
        status="sent", sent_at=bindparam("now"), message_id=bindparam("header_id"), error=None, due_at=None,
        claimed_until=None, links=bindparam("links", type_=messages.c.links.type),
    )
)
_SET_TRIGGER = update(triggers).where(triggers.c.id == bindparam("trigger_id")).values(
    status=bindparam("outcome"), reason=bindparam("why")
)
_MARK_STARTED = (
    update(messages)
    .where(messages.c.id == bindparam("message"), messages.c.status == "sending", messages.c.claim_seq == bindparam("claim"))
    .values(smtp_started_at=bindparam("now"))
)
"""Built once: on the send path, building a statement costs more Python than running it."""


def retry_delay(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, … capped at one hour."""
    return timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 3600))


def lease(rt: Runtime) -> timedelta:
    return timedelta(seconds=rt.settings.claim_lease)


def resolve_hint(message_id: str) -> str:
    return f"settle with `trigger-email messages resolve {message_id} sent|resend`"


class Leases:
    """The messages this process is looking after, and the one task that renews their
    leases every third of `claim_lease`. A queued message a job is waiting to send keeps the
    sweep from enqueueing it again; a claimed one keeps the sweep from releasing it."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.waiting: set[str] = set()
        self.claimed: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def wait(self, message_id: str) -> None:
        self.waiting.add(message_id)
        self._start()

    def claim(self, message_id: str, claim_seq: int) -> None:
        self.waiting.discard(message_id)
        self.claimed[message_id] = claim_seq
        self._start()

    def drop(self, message_id: str) -> None:
        self.waiting.discard(message_id)
        self.claimed.pop(message_id, None)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trigger-email lease heartbeat")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(self.rt.settings.claim_lease / 3, 0.05))
            try:
                await self.renew()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the lease has slack
                log.warning("could not renew message leases: %s", exc)

    async def renew(self) -> None:
        waiting, claimed = list(self.waiting), dict(self.claimed)
        if not waiting and not claimed:
            return
        until = self.rt.clock.now() + lease(self.rt)
        async with self.rt.db.begin() as connection:
            if waiting:
                await connection.execute(
                    update(messages)
                    .where(messages.c.id.in_(waiting), messages.c.status == "queued")
                    .values(claimed_until=until)
                )
            for message_id, claim_seq in claimed.items():
                await connection.execute(
                    update(messages)
                    .where(messages.c.id == message_id, messages.c.status == "sending", messages.c.claim_seq == claim_seq)
                    .values(claimed_until=until)
                )

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def leases_of(rt: Runtime) -> Leases:
    leases = rt.extras.get("leases")
    if leases is None:
        leases = rt.extras["leases"] = Leases(rt)
    return leases


_CLAIM = (
    update(messages)
    .where(
        messages.c.id == bindparam("message"),
        messages.c.status == "queued",
        (messages.c.due_at.is_(None)) | (messages.c.due_at <= bindparam("now", type_=messages.c.due_at.type)),
    )
    .values(
        status="sending", claimed_at=bindparam("now"), claimed_until=bindparam("until"), smtp_started_at=None,
        attempts=messages.c.attempts + 1, claim_seq=messages.c.claim_seq + 1,
    )
    .returning(*messages.c)
)
_SOURCE_REF = select(triggers.c.source_ref).where(triggers.c.id == bindparam("trigger_id"))


async def _claim(rt: Runtime, message_id: str, now: datetime) -> dict[str, Any] | None:
    async with rt.db.begin() as connection:
        row = (
            await connection.execute(_CLAIM, {"message": message_id, "now": now, "until": now + lease(rt)})
        ).mappings().first()
        if row is None:
            return None
        message = dict(row)
        message["source_ref"] = (await connection.execute(_SOURCE_REF, {"trigger_id": message["trigger_id"]})).scalar()
        return message


async def send_message(rt: Runtime, message_id: str) -> str | None:
    """Send one queued message; returns its new status, or None when it was not ours to send.

    The row stays `queued` while this waits for a pooled SMTP connection; it is claimed only
    once one is in hand."""
    leases = leases_of(rt)
    leases.wait(message_id)
    message: dict[str, Any] | None = None
    try:
        async with rt.mailer.connection() as client:
            message = await _claim(rt, message_id, rt.clock.now())
            if message is None:
                return None
            leases.claim(message_id, message["claim_seq"])
            return await _deliver(rt, message, client)
    except Stopping:
        await asyncio.shield(_put_back(rt, message_id))
        return "queued"
    except ClaimLost:
        log.warning("message %s: claim expired before DATA; left to whoever holds it now", message_id)
        return None
    except DeliveryError as error:
        if message is not None:
            raise
        # No connection could be made: the row is still queued, count the attempt.
        if error.code is not None:
            verdict = classify(code=error.code, diagnostic=error.detail)
            BOUNCES.labels(verdict.kind, verdict.reason).inc()
            if verdict.kind == "block":
                log.warning("the SMTP server refuses our session (%s: %s)", verdict.reason, error)
        return await _unclaimed_failure(rt, message_id, str(error))
    finally:
        leases.drop(message_id)


async def _deliver(rt: Runtime, message: dict[str, Any], client: Any) -> str:
    """Compose and hand a claimed (`sending`) message to SMTP, then record the outcome."""
    campaign = rt.config.campaign(message["campaign_id"])
    if campaign is None:
        return await _finish_failed(rt, message, f"campaign {message['campaign_id']} is no longer in the config")
    hold = await paused_domains(rt).hold(rt, message["to_address"], rt.clock.now())
    if hold is not None:
        return await _held(rt, message, hold)
    started = False

    async def mark_started() -> None:
        nonlocal started
        async with rt.db.begin() as connection:
            done = await connection.execute(
                _MARK_STARTED, {"message": message["id"], "claim": message["claim_seq"], "now": rt.clock.now()}
            )
        if done.rowcount != 1:
            raise ClaimLost()
        started = True

    try:
        files, missing = await gather_attachments(rt, message, campaign)
        if missing and campaign.require_attachments:
            return await _finish_failed(rt, message, "require_attachments: " + "; ".join(missing))
        if missing:
            log.warning("message %s goes without attachment(s): %s", message["id"], "; ".join(missing))
        email, mime = compose(rt, message, campaign, files)
        raw = rt.mailer.wire_bytes(mime)
        # The receiving domain's pace (per worker): its concurrency and rate, slowed after
        # a rate answer.
        async with limiter_of(rt).slot(message["to_address"]):
            with SEND_SECONDS.time():
                answer = await rt.mailer.transact(
                    client, raw, envelope_from=email.envelope_from or email.sender, recipient=message["to_address"],
                    started=mark_started,
                )
    except DeliveryError as error:
        MESSAGES.labels(error.kind).inc()
        return await _delivery_failed(rt, message, campaign, error)
    except (Stopping, ClaimLost):
        if not started:
            await asyncio.shield(_release(rt, message, "worker stopping before the SMTP transaction", enqueue=False))
        raise
    except Ambiguous as exc:
        return await _mark_unknown(rt, message, str(exc))
    except asyncio.CancelledError:
        if started:
            await asyncio.shield(_mark_unknown(rt, message, "worker stopped inside the SMTP transaction, after DATA"))
        else:
            await asyncio.shield(_release(rt, message, "worker stopped before the SMTP transaction", enqueue=True))
        raise
    except Exception as exc:  # noqa: BLE001 - bounded retry, then failed with the error as reason
        log.exception("message %s: unexpected error", message["id"])
        if started:
            return await _mark_unknown(rt, message, describe_error(exc))
        return await _errored(rt, message, describe_error(exc))
    MESSAGES.labels("sent").inc()
    return await _sent(rt, message, campaign, mime["Message-ID"], answer)


async def _sent(rt: Runtime, message: dict[str, Any], campaign: Campaign, header_id: str, answer: str) -> str:
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        marked = await connection.execute(
            _MARK_SENT,
            {"message": message["id"], "claim": message["claim_seq"], "now": now, "header_id": header_id,
             "links": message.get("links")},
        )
        if marked.rowcount != 1:
            log.warning("message %s was sent but its row changed meanwhile; left as it is", message["id"])
            return "sent"
        await _after_sent(rt, connection, message, campaign, now)
    log.info("message %s sent to %s", message["id"], message["to_address"])
    return "sent"


async def _after_sent(rt: Runtime, connection: AsyncConnection, message: dict[str, Any], campaign: Campaign, now: datetime) -> None:
    """What a sent message sets off: the trigger's outcome, the next resend, the CRM activity."""
    await _set_trigger(connection, message, "sent", f"sent to {message['to_address']}")
    if campaign.resend and message["seq"] < campaign.resend.max:
        await connection.execute(messages.insert(), {
            "id": new_id("msg"), "trigger_id": message["trigger_id"], "npi": message["npi"],
            "campaign_id": campaign.id, "kind": "resend", "seq": message["seq"] + 1, "status": "scheduled",
            "attempts": 0, "due_at": now + campaign.resend.after, "created_at": now,
        })
    await record_activity(rt, connection, message, "sent", now, {"to": message["to_address"]})


def _ours(message: dict[str, Any]) -> Any:
    return (
        (messages.c.id == message["id"]) & (messages.c.status == "sending")
        & (messages.c.claim_seq == message["claim_seq"])
    )


async def _release(rt: Runtime, message: dict[str, Any], reason: str, *, enqueue: bool = True) -> None:
    """Put a claimed message whose SMTP transaction never started back to `queued`, not
    counting the attempt, and enqueue it under a new job id (the old one may stay blocked by
    arq's in-progress key)."""
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        done = await connection.execute(
            update(messages)
            .where(_ours(message), messages.c.smtp_started_at.is_(None))
            .values(status="queued", claimed_until=None, due_at=None, attempts=messages.c.attempts - 1, error=reason)
        )
    if done.rowcount == 1:
        log.info("message %s put back to queued: %s", message["id"], reason)
        if enqueue:
            await rt.queue.enqueue(SEND_MESSAGE, message["id"], job_id=f"send:{message['id']}:c{message['claim_seq']}")


async def _put_back(rt: Runtime, message_id: str) -> None:
    """A queued message this worker will not send after all (it is stopping): let go of it
    and enqueue it for the other workers."""
    async with rt.db.begin() as connection:
        await connection.execute(
            update(messages).where(messages.c.id == message_id, messages.c.status == "queued").values(claimed_until=None)
        )
    await rt.queue.enqueue(SEND_MESSAGE, message_id, job_id=f"send:{message_id}:s{secrets.token_hex(4)}")


async def _mark_unknown(rt: Runtime, message: dict[str, Any], reason: str) -> str:
    async with rt.db.begin() as connection:
        done = await connection.execute(
            update(messages).where(_ours(message)).values(status="unknown", claimed_until=None, error=reason)
        )
        if done.rowcount == 1:
            await mark_trigger_unknown(connection, message, reason)
    if done.rowcount == 1:
        MESSAGES.labels("unknown").inc()
        log.warning("message %s to %s is unknown: %s; %s", message["id"], message["to_address"], reason, resolve_hint(message["id"]))
    return "unknown"


async def mark_trigger_unknown(connection: AsyncConnection, message: Any, reason: str) -> None:
    await _set_trigger(
        connection, message, "unknown",
        f"the SMTP transaction to {message['to_address']} got no answer ({reason}); it may have been delivered; "
        + resolve_hint(message["id"]),
    )


async def _errored(rt: Runtime, message: dict[str, Any], error: str) -> str:
    """An unexpected error before the SMTP transaction: retry later, a bounded number of times."""
    if message["attempts"] >= rt.settings.send_max_attempts:
        return await _finish_failed(rt, message, f"after {message['attempts']} attempt(s): {error}")
    due = rt.clock.now() + retry_delay(message["attempts"])
    async with rt.db.begin() as connection:
        await connection.execute(
            update(messages)
            .where(_ours(message))
            .values(status="queued", due_at=due, claimed_until=None, error=f"attempt {message['attempts']}: {error}")
        )
    log.warning("message %s: attempt %d failed (%s), retry at %s", message["id"], message["attempts"], error, due.isoformat())
    return "queued"


async def _unclaimed_failure(rt: Runtime, message_id: str, error: str) -> str:
    """No SMTP connection could be had for a queued message: count the attempt, back off."""
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        row = (
            await connection.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status == "queued")
                .values(attempts=messages.c.attempts + 1, claimed_until=None)
                .returning(messages.c.attempts, messages.c.trigger_id, messages.c.kind)
            )
        ).mappings().first()
        if row is None:
            return "queued"
        attempts = row["attempts"]
        if attempts >= rt.settings.send_max_attempts:
            reason = f"after {attempts} attempt(s): {error}"
            await connection.execute(
                update(messages).where(messages.c.id == message_id).values(status="failed", error=reason, due_at=None)
            )
            await _set_trigger(connection, row, "failed", reason)
            return "failed"
        due = now + retry_delay(attempts)
        await connection.execute(
            update(messages).where(messages.c.id == message_id).values(due_at=due, error=f"attempt {attempts}: {error}")
        )
    log.info("message %s: no SMTP connection (%s), retry at %s", message_id, error, due.isoformat())
    return "queued"


async def _delivery_failed(rt: Runtime, message: dict[str, Any], campaign: Campaign, error: DeliveryError) -> str:
    """An SMTP answer that refused the email, classified like any bounce (core.classify):
    `hard` marks the address and sends the same email to the next one; `block` leaves the
    address alone, throttles the receiving domain and retries later; a `rate_limited` answer
    also slows this worker's pace to that domain; `soft` retries with backoff."""
    now = rt.clock.now()
    verdict = classify(code=error.code, diagnostic=error.detail)
    BOUNCES.labels(verdict.kind, verdict.reason).inc()
    if verdict.kind == "hard":
        return await _rejected(rt, message, campaign, error, now)
    if verdict.kind == "block":
        return await _blocked(rt, message, verdict, error, now)
    if verdict.kind == "soft" and error.code is not None and error.code >= 500:
        # A refusal the receiver calls final, for a reason that may pass (a full mailbox):
        # counted like an asynchronous soft bounce, and the address is marked once there
        # are `bounces.soft_limit` of them.
        async with rt.db.begin() as connection:
            await _event(connection, message, "soft_bounce", f"{verdict.reason}: {error}", now)
            recent = await soft_bounces(rt, connection, message["to_address"], now)
        if recent >= rt.config.bounces.soft_limit:
            return await _rejected(rt, message, campaign, error, now, why=f"{recent} soft bounces; last: {error}")
        if verdict.reason in {"message_too_big", "undefined"}:
            return await _finish_failed(rt, message, f"{verdict.reason}: {error}")
    if message["attempts"] < rt.settings.send_max_attempts and (verdict.kind == "soft"):
        due = now + retry_delay(message["attempts"])
        async with rt.db.begin() as connection:
            await connection.execute(
                update(messages)
                .where(_ours(message))
                .values(status="queued", due_at=due, claimed_until=None, error=f"attempt {message['attempts']}: {error}")
            )
        log.info("message %s: temporary failure (%s), retry at %s", message["id"], error, due.isoformat())
        return "queued"
    return await _finish_failed(rt, message, f"after {message['attempts']} attempt(s): {error}")


async def _event(connection: AsyncConnection, message: dict[str, Any], kind: str, detail: str, now: datetime) -> None:
    await connection.execute(engagement_events.insert().values(
        message_id=message["id"], npi=message["npi"], address=message["to_address"], kind=kind, detail=detail[:1000],
        occurred_at=now,
    ))


async def soft_bounces(rt: Runtime, connection: AsyncConnection, address: str, now: datetime) -> int:
    return (
        await connection.execute(
            select(func.count()).where(
                engagement_events.c.address == address, engagement_events.c.kind == "soft_bounce",
                engagement_events.c.occurred_at > now - rt.config.bounces.soft_window,
            )
        )
    ).scalar_one()


async def _rejected(
    rt: Runtime, message: dict[str, Any], campaign: Campaign, error: DeliveryError, now: datetime, *, why: str | None = None
) -> str:
    """The address is gone: mark it, and send the same email to the HCP's next address."""
    reason = why or str(error)
    async with rt.db.begin() as connection:
        await mark_address(connection, message["npi"], message["to_address"], "hard_bounced", reason, now)
        await _event(connection, message, "hard_bounce", reason, now)
        await record_activity(rt, connection, message, "bounced", now, {"to": message["to_address"], "reason": reason})
        following = await pick_address(connection, message["npi"], campaign)
        if following is not None:
            await connection.execute(
                update(messages)
                .where(messages.c.id == message["id"])
                .values(status="queued", to_address=following, due_at=None, claimed_until=None,
                        error=f"{message['to_address']} rejected: {error}")
            )
    if following is not None:
        log.info("message %s: %s rejected (%s), trying %s", message["id"], message["to_address"], error, following)
        await rt.queue.enqueue(SEND_MESSAGE, message["id"], job_id=f"send:{message['id']}:c{message['claim_seq']}")
        return "queued"
    return await _finish_failed(
        rt, message, f"no deliverable address left: {message['to_address']} rejected ({error})",
        trigger_status="no_deliverable_email",
    )


async def _blocked(rt: Runtime, message: dict[str, Any], verdict: Any, error: DeliveryError, now: datetime) -> str:
    """The receiver refuses us, not the address: keep the address, throttle (or pause) the
    receiving domain, retry the email later with backoff, a bounded number of times."""
    settings = rt.config.bounces
    if verdict.reason == "rate_limited":
        limiter_of(rt).slow_down(group_of(message["to_address"]) or "")
    async with rt.db.begin() as connection:
        await _event(connection, message, "block", f"{verdict.reason}: {error}", now)
        hold = await record_block(rt, connection, message["to_address"], verdict.reason, str(error), now)
        blocks = (
            await connection.execute(
                select(func.count()).where(engagement_events.c.message_id == message["id"], engagement_events.c.kind == "block")
            )
        ).scalar_one()
        if blocks > settings.block_retries:
            due = None
        else:
            due = now + (retry_delay(blocks) if error.code and error.code < 500 else settings.block_retry_after * 2 ** (blocks - 1))
            if hold is not None and hold.state == "paused" and hold.until > due:
                due = hold.until
            await connection.execute(
                update(messages)
                .where(_ours(message))
                .values(status="queued", due_at=due, claimed_until=None, attempts=messages.c.attempts - 1,
                        error=f"blocked ({verdict.reason}): {error}"[:1000])
            )
    paused_domains(rt).forget()
    if due is None:
        return await _finish_failed(rt, message, f"refused {blocks} times ({verdict.reason}): {error}; the address is kept")
    log.info("message %s: %s refused us (%s: %s); address kept, retry at %s", message["id"], hold.group if hold else "",
             verdict.reason, error, due.isoformat())
    return "queued"


async def _held(rt: Runtime, message: dict[str, Any], hold: Hold) -> str:
    """Sending to the receiving domain is paused after repeated blocks: the email waits
    until the pause ends, without spending an attempt."""
    async with rt.db.begin() as connection:
        await connection.execute(
            update(messages)
            .where(_ours(message))
            .values(status="queued", due_at=hold.until, attempts=messages.c.attempts - 1, claimed_until=None,
                    error=f"{hold.group} paused until {hold.until.isoformat()}: {hold.reason}"[:1000])
        )
    log.info("message %s waits: %s paused until %s", message["id"], hold.group, hold.until.isoformat())
    return "queued"


async def _finish_failed(
    rt: Runtime, message: dict[str, Any], reason: str, *, trigger_status: str = "failed"
) -> str:
    async with rt.db.begin() as connection:
        await connection.execute(
            update(messages)
            .where(messages.c.id == message["id"])
            .values(status="failed", error=reason, due_at=None, claimed_until=None)
        )
        await _set_trigger(connection, message, trigger_status, reason)
    log.warning("message %s failed: %s", message["id"], reason)
    return "failed"


async def _set_trigger(connection: AsyncConnection, message: Any, status: str, reason: str) -> None:
    """Only the initial message decides the trigger's outcome; resends are shown per message."""
    if message["kind"] != "initial":
        return
    await connection.execute(_SET_TRIGGER, {"trigger_id": message["trigger_id"], "outcome": status, "why": reason})


class NotUnknown(Exception):
    """`messages resolve` on a message that is not `unknown` (or does not exist)."""


async def resolve_message(rt: Runtime, message_id: str, verdict: str) -> dict[str, Any]:
    """Settle an `unknown` message. `sent`: the operator checked it was delivered; it is
    recorded as sent, with what a send sets off (resends, the CRM activity). `resend`: it was
    not delivered; it goes back to `queued` and is sent again."""
    if verdict not in ("sent", "resend"):
        raise ValueError("verdict must be sent or resend")
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        row = (await connection.execute(select(messages).where(messages.c.id == message_id))).mappings().first()
        if row is None:
            raise NotUnknown(f"no message {message_id}")
        if row["status"] != "unknown":
            raise NotUnknown(f"message {message_id} is {row['status']}, not unknown")
        message = dict(row)
        if verdict == "sent":
            campaign = rt.config.campaign(message["campaign_id"])
            await connection.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status == "unknown")
                .values(status="sent", sent_at=message["smtp_started_at"] or now, error="resolved as sent by an operator")
            )
            if campaign is not None:
                await _after_sent(rt, connection, message, campaign, now)
            else:
                await _set_trigger(connection, message, "sent", f"sent to {message['to_address']}")
        else:
            await connection.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status == "unknown")
                .values(status="queued", due_at=None, claimed_until=None, smtp_started_at=None,
                        error="resolved as not delivered by an operator; sending again")
            )
            await _set_trigger(connection, message, "queued", f"queued to {message['to_address']} (resend after unknown)")
    if verdict == "resend":
        await rt.queue.enqueue(SEND_MESSAGE, message_id, job_id=f"send:{message_id}:c{message['claim_seq']}:resolved")
    log.info("message %s resolved as %s", message_id, verdict)
    return {"id": message_id, "status": "sent" if verdict == "sent" else "queued", "trigger_id": message["trigger_id"]}
