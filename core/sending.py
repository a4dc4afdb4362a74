"""Delivering one message row: claim the row, compose, hold an SMTP connection, send, record.

A message moves `queued → sending → sent | failed` (or `unknown`). A queued message (a
resend, a retry) stays `queued` until a worker holds an SMTP connection for it; only then is
it claimed with a conditional UPDATE (`sending`, a fresh `claim_seq`, a lease
`claimed_until` that the worker renews while it is alive). A trigger's first email is
created claimed by its decision and composed before the job waits for a connection. Right
before DATA, the first moment the server could take the message, the worker records
`smtp_started_at`. From that:

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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign
from core.attachments import gather as gather_attachments
from core.compose import compose
from core.db import each_returning, engagement_events, messages, new_id, one_of, triggers
from core.decisions import decide, pick_address
from core.directory import mark_address
from core.classify import classify
from core.domains import Hold, group_of, limiter_of, paused_domains, record_block
from core.errors import describe_error
from core.mailer import Ambiguous, DeliveryError, Slot, Stopping
from core.group_commit import GroupCommit
from core.outbox import Fact, record_activities, record_activity
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
        messages.c.id == bindparam("message"), messages.c.claim_seq == bindparam("claim"),
        one_of(messages.c.status, ("sending", "unknown")),
    )
    .values(
        status="sent", sent_at=bindparam("now"), message_id=bindparam("header_id"), error=None, due_at=None,
        claimed_until=None, links=bindparam("links", type_=messages.c.links.type),
    )
    .returning(messages.c.id)
)
"""Only while the claim is ours: a message whose claim was released and taken again meanwhile
is left as it is."""
_SET_TRIGGER = update(triggers).where(triggers.c.id == bindparam("trigger_id")).values(
    status=bindparam("outcome"), reason=bindparam("why")
)
_MARK_STARTED = (
    update(messages)
    .where(messages.c.id == bindparam("message"), messages.c.status == "sending", messages.c.claim_seq == bindparam("claim"))
    .values(smtp_started_at=bindparam("now"))
    .returning(messages.c.id)
)
"""One autocommit statement of its own, never grouped with other jobs' writes: between it and
DATA is the one moment where a killed worker leaves an `unknown` message that never left, and
a group write would widen it. (Statements are built once: on the send path, building one
costs more Python than running it.)"""


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
    .returning(
        *messages.c,
        select(triggers.c.source_ref).where(triggers.c.id == messages.c.trigger_id).scalar_subquery().label("source_ref"),
    )
)


async def _claim(rt: Runtime, message_id: str, now: datetime) -> dict[str, Any] | None:
    rows = await rt.db.write(_CLAIM, {"message": message_id, "now": now, "until": now + lease(rt)})
    return dict(rows[0]) if rows else None


async def send_message(rt: Runtime, message_id: str) -> str | None:
    """Send one queued message (a resend, a retry, one put back); returns its new status, or
    None when it was not ours to send.

    The row stays `queued` while this waits for a pooled SMTP connection; it is claimed only
    once one is in hand."""
    leases = leases_of(rt)
    leases.wait(message_id)
    claimed = False
    try:
        async with rt.mailer.connection() as client:
            message = await _claim(rt, message_id, rt.clock.now())
            if message is None:
                return None
            claimed = True
            leases.claim(message_id, message["claim_seq"])
            outcome = await _deliver_claimed(rt, message, client)
        return await settle(outcome)
    except Stopping:
        await asyncio.shield(_put_back(rt, message_id))
        return "queued"
    except DeliveryError as error:
        if claimed:
            raise
        # No connection could be made: the row is still queued, count the attempt.
        _no_connection(error)
        return await _unclaimed_failure(rt, message_id, str(error))
    finally:
        leases.drop(message_id)


async def decide_and_send(rt: Runtime, trigger_id: str) -> str | None:
    """Decide a trigger and send its email in the same job; returns the trigger's outcome
    (the message's status when one was sent), or None when it was not ours to decide.

    The decision creates the message already claimed (one transaction, made together with
    the decisions of the other jobs running: core.group_commit), and the job then waits for
    a pooled SMTP connection holding the claim's lease. A job that stops before the SMTP
    transaction (the worker stopping, no connection to be had) puts the message back."""
    decision = await decide(rt, trigger_id, claim=True)
    if decision is None or decision.claimed is None:
        return decision.status if decision is not None else None
    message = decision.claimed
    leases = leases_of(rt)
    leases.claim(message["id"], message["claim_seq"])
    connected = False
    try:
        ready = await _prepare(rt, message)
        if isinstance(ready, str):
            return ready
        async with rt.mailer.connection() as client:
            connected = True
            outcome = await _deliver_claimed(rt, message, client, ready)
        return await settle(outcome)
    except Stopping:
        if connected:
            raise
        await asyncio.shield(_release(rt, message, "worker stopping before the SMTP transaction"))
        return "queued"
    except DeliveryError as error:
        if connected:
            raise
        _no_connection(error)
        return await _errored(rt, message, str(error))
    except asyncio.CancelledError:
        if not connected:
            await asyncio.shield(_release(rt, message, "worker stopped before the SMTP transaction"))
        raise
    finally:
        leases.drop(message["id"])


async def _deliver_claimed(
    rt: Runtime, message: dict[str, Any], client: Any, ready: Ready | None = None
) -> str | Recording | None:
    """Deliver a message this worker claimed (the caller holds its lease); a worker that
    stops before the SMTP transaction gives it back for the other workers."""
    try:
        return await _deliver(rt, message, client, ready)
    except Stopping:
        await asyncio.shield(_put_back(rt, message["id"]))
        return "queued"
    except ClaimLost:
        log.warning("message %s: claim expired before DATA; left to whoever holds it now", message["id"])
        return None


def _no_connection(error: DeliveryError) -> None:
    if error.code is not None:
        verdict = classify(code=error.code, diagnostic=error.detail)
        BOUNCES.labels(verdict.kind, verdict.reason).inc()
        if verdict.kind == "block":
            log.warning("the SMTP server refuses our session (%s: %s)", verdict.reason, error)


@dataclass(frozen=True)
class Ready:
    """A claimed message composed and flattened, waiting for its SMTP transaction."""

    campaign: Campaign
    envelope_from: str
    raw: bytes
    header_id: str


async def _prepare(rt: Runtime, message: dict[str, Any]) -> Ready | str:
    """Everything before the SMTP transaction: the campaign, the receiving domain's pause,
    the attachments, the MIME. A status string when the message ends here (recorded); an
    unexpected error is retried later (`_errored`). Run before a connection is taken where
    the caller can, so composing never holds one of the pool's connections."""
    try:
        campaign = rt.config.campaign(message["campaign_id"])
        if campaign is None:
            return await _finish_failed(rt, message, f"campaign {message['campaign_id']} is no longer in the config")
        hold = await paused_domains(rt).hold(rt, message["to_address"], rt.clock.now())
        if hold is not None:
            return await _held(rt, message, hold)
        files, missing = await gather_attachments(rt, message, campaign)
        if missing and campaign.require_attachments:
            return await _finish_failed(rt, message, "require_attachments: " + "; ".join(missing))
        if missing:
            log.warning("message %s goes without attachment(s): %s", message["id"], "; ".join(missing))
        email, mime = compose(rt, message, campaign, files)
        return Ready(campaign, email.envelope_from or email.sender, rt.mailer.wire_bytes(mime), mime["Message-ID"])
    except Exception as exc:  # noqa: BLE001 - bounded retry, then failed with the error as reason
        log.exception("message %s: unexpected error", message["id"])
        return await _errored(rt, message, describe_error(exc))


class Recording:
    """An email the SMTP server accepted, its `sent` record queued (`sent_writer`) before
    its connection went back to the pool; `finish()` awaits the write."""

    def __init__(self, message: dict[str, Any], written: asyncio.Future[bool]):
        self.message = message
        self.written = written

    async def finish(self) -> str:
        # Shielded: a job cancelled meanwhile must not cancel the future its pool place
        # (`Slot.unrecorded`) waits on; the write goes ahead either way.
        if await asyncio.shield(self.written):
            log.info("message %s sent to %s", self.message["id"], self.message["to_address"])
        else:
            log.warning("message %s was sent but its row changed meanwhile; left as it is", self.message["id"])
        return "sent"


async def settle(outcome: str | Recording | None) -> str | None:
    """The status of a delivery, once its `sent` record (if any) is written."""
    return await outcome.finish() if isinstance(outcome, Recording) else outcome


async def _deliver(rt: Runtime, message: dict[str, Any], client: Any, ready: Ready | None = None) -> str | Recording:
    """Hand a claimed (`sending`) message to SMTP (composed first unless the caller did),
    then record the outcome. A `sent` record is queued before the caller gives the
    connection back, and the next transaction through the same pool place (`Slot`) starts
    DATA only once that record is written. So a place never has two messages past the
    start of DATA without their outcome recorded, and a worker killed at any moment leaves
    at most one `unknown` message per pooled connection, as when the record was written
    holding the connection, while the connection serves the next email during the write."""
    if ready is None:
        ready = await _prepare(rt, message)
    if isinstance(ready, str):
        return ready
    slot: Slot = client.te_slot
    started = False

    async def mark_started() -> None:
        nonlocal started
        await slot.recorded()
        if not await rt.db.write(_MARK_STARTED, {"message": message["id"], "claim": message["claim_seq"], "now": rt.clock.now()}):
            raise ClaimLost()
        started = True

    try:
        # The receiving domain's pace (per worker): its concurrency and rate, slowed after
        # a rate answer.
        async with limiter_of(rt).slot(message["to_address"]):
            with SEND_SECONDS.time():
                await rt.mailer.transact(
                    client, ready.raw, envelope_from=ready.envelope_from, recipient=message["to_address"],
                    started=mark_started,
                )
    except DeliveryError as error:
        MESSAGES.labels(error.kind).inc()
        return await _delivery_failed(rt, message, ready.campaign, error)
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
    slot.unrecorded = sent_writer(rt).enqueue((message, ready.campaign, ready.header_id))
    return Recording(message, slot.unrecorded)


def sent_writer(rt: Runtime) -> GroupCommit[tuple[dict[str, Any], Campaign, str], bool]:
    """What sent emails record, written together for the jobs that finish at the same time."""
    writer = rt.extras.get("sent_writer")
    if writer is None:
        writer = rt.extras["sent_writer"] = GroupCommit(lambda batch: _record_sent(rt, batch), name="sent")
    return writer


async def _record_sent(rt: Runtime, batch: list[tuple[dict[str, Any], Campaign, str]]) -> list[bool]:
    """Messages the SMTP server accepted: `sent`, with what that sets off, in one
    transaction. A message whose row changed meanwhile (its claim was released and taken
    again) is left as it is; False for it."""
    now = rt.clock.now()
    async with rt.db.lean() as connection:
        ours = {row[0] for row in await each_returning(connection, _MARK_SENT, [
            {"message": message["id"], "claim": message["claim_seq"], "now": now, "header_id": header, "links": message.get("links")}
            for message, _campaign, header in batch
        ])}
        mine = [(message, campaign, header) for message, campaign, header in batch if message["id"] in ours]
        if mine:
            await _after_sent(rt, connection, [(message, campaign) for message, campaign, _header in mine], now)
    return [message["id"] in ours for message, _campaign, _header in batch]


async def _after_sent(
    rt: Runtime, connection: AsyncConnection, sent: list[tuple[dict[str, Any], Campaign]], now: datetime
) -> None:
    """What sent messages set off: their triggers' outcome, the next resends, the CRM activities."""
    outcomes = [
        {"trigger_id": message["trigger_id"], "outcome": "sent", "why": f"sent to {message['to_address']}"}
        for message, _campaign in sent if _decides_trigger(message)
    ]
    if outcomes:
        await connection.execute(_SET_TRIGGER, outcomes)
    resends = [
        {
            "id": new_id("msg"), "trigger_id": message["trigger_id"], "npi": message["npi"],
            "campaign_id": campaign.id, "kind": "resend", "seq": message["seq"] + 1, "status": "scheduled",
            "attempts": 0, "due_at": now + campaign.resend.after, "created_at": now,
        }
        for message, campaign in sent if campaign.resend and message["seq"] < campaign.resend.max
    ]
    if resends:
        await connection.execute(messages.insert(), resends)
    await record_activities(rt, connection, [Fact(message, "sent", {"to": message["to_address"]}) for message, _c in sent], now)


def _ours(message: dict[str, Any]) -> Any:
    return (
        (messages.c.id == message["id"]) & (messages.c.status == "sending")
        & (messages.c.claim_seq == message["claim_seq"])
    )


async def _release(rt: Runtime, message: dict[str, Any], reason: str, *, enqueue: bool = True) -> None:
    """Put a claimed message whose SMTP transaction never started back to `queued`, not
    counting the attempt, and enqueue it under a new job id (the old one may stay blocked by
    arq's in-progress key)."""
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


def _decides_trigger(message: Any) -> bool:
    """Only the initial message decides the trigger's outcome; resends are shown per message."""
    return message["kind"] == "initial"


async def _set_trigger(connection: AsyncConnection, message: Any, status: str, reason: str) -> None:
    if not _decides_trigger(message):
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
                await _after_sent(rt, connection, [(message, campaign)], now)
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
