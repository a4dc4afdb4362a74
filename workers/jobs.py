"""arq job functions: each one is a thin call into core or connectors."""

from __future__ import annotations

from typing import Any

from core.outbox import push_outbox
from core.runtime import Runtime
from core.scheduler import sweep as sweep_due
from core.sending import decide_and_send, send_message as send_one


def _rt(ctx: dict[str, Any]) -> Runtime:
    return ctx["runtime"]


async def process_trigger(ctx: dict[str, Any], trigger_id: str) -> str | None:
    return await decide_and_send(_rt(ctx), trigger_id)


async def send_message(ctx: dict[str, Any], message_id: str) -> str | None:
    return await send_one(_rt(ctx), message_id)


async def process_inbound(ctx: dict[str, Any], event_id: int) -> str | None:
    from connectors.inbound import process_event

    return await process_event(_rt(ctx), event_id)


async def process_inbound_batch(ctx: dict[str, Any], event_ids: list[int]) -> int:
    from core.inbound import fan_out

    return await fan_out(_rt(ctx), event_ids)


async def push_activities(ctx: dict[str, Any]) -> dict[str, int]:
    rt = _rt(ctx)
    return await push_outbox(rt, rt.extras.get("connectors", {}))


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    rt = _rt(ctx)
    return await sweep_due(rt, rt.extras.get("sweep_steps", []))
