"""Live config edits: check, store, publish, adopt, without restarting anything.

`trigger-email config reload` (or SIGHUP on `serve` / `worker`) checks the YAML file, and
only if it is valid stores its text in `config_loads` and publishes the row id on a Redis
channel. Every running process listens on that channel and also polls the table every few
seconds (a lost message or a Redis restart only delays it): on a newer row it parses the
stored text (relative paths against its own config file's folder) and swaps its config. A
file that does not pass the check changes nothing and says why.

Each campaign's version (a hash of its settings) is recorded in `campaign_versions` with the
time it first took effect; each message records the version it was made with.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from config import Config, ConfigError, load_config, parse_config
from config.loader import EXAMPLE_CONFIG
from core.db import campaign_versions, config_loads, insert_ignore

log = logging.getLogger(__name__)

CHANNEL = "trigger-email:config"
POLL_SECONDS = 3.0


def config_path(rt: Any) -> Path:
    return Path(rt.settings.trigger_email_config or EXAMPLE_CONFIG)


async def record_versions(rt: Any, config: Config) -> None:
    """Note when each campaign version first took effect (the first process to adopt it)."""
    rows = [
        {"campaign_id": c.id, "version": c.version, "took_effect_at": rt.clock.now(), "subject": c.subject}
        for c in config.campaigns
    ]
    if not rows:
        return
    async with rt.db.begin() as connection:
        await connection.execute(insert_ignore(connection, campaign_versions, conflict=["campaign_id", "version"]), rows)


async def latest_load_id(rt: Any) -> int:
    async with rt.db.connect() as connection:
        return int((await connection.execute(select(func.max(config_loads.c.id)))).scalar() or 0)


async def publish(rt: Any, config: Config, text: str, source: str) -> int:
    """Store a checked config and tell every running process; returns the load id."""
    async with rt.db.begin() as connection:
        result = await connection.execute(
            config_loads.insert().values(text_hash=config.text_hash, text=text, source=source[:500], loaded_at=rt.clock.now())
        )
        load_id = int(result.inserted_primary_key[0])
    await record_versions(rt, config)
    if rt.queue.redis is not None:
        try:
            await rt.queue.redis.publish(CHANNEL, str(load_id))
        except Exception as exc:  # noqa: BLE001 - the processes poll the table as well
            log.warning("config %s stored, but publishing on Redis failed (processes poll within %ss): %s",
                        load_id, POLL_SECONDS, exc)
    return load_id


def _changes(old: Config, new: Config) -> str:
    before = {c.id: c.version for c in old.campaigns}
    parts = []
    for campaign in new.campaigns:
        was = before.pop(campaign.id, None)
        if was is None:
            parts.append(f"{campaign.id} added ({campaign.version})")
        elif was != campaign.version:
            parts.append(f"{campaign.id} {was} → {campaign.version}")
    parts += [f"{campaign_id} removed" for campaign_id in before]
    return ", ".join(parts) or "no campaign changed"


async def adopt(rt: Any, config: Config, origin: str) -> None:
    old = rt.config
    rt.config = config
    await record_versions(rt, config)
    log.info("config reloaded from %s: %s", origin, _changes(old, config))


async def reload_and_publish(rt: Any) -> bool:
    """SIGHUP: check the process's config file; if valid, store, publish and adopt it."""
    path = config_path(rt)
    try:
        text = path.read_text(encoding="utf-8")
        config = parse_config(text, base=path.resolve().parent, source=str(path))
    except OSError as exc:
        log.error("config reload refused: cannot read %s: %s; keeping the running config", path, exc)
        return False
    except ConfigError as error:
        log.error("config reload refused, keeping the running config: %s", "; ".join(str(p) for p in error.problems))
        return False
    load_id = await publish(rt, config, text, str(path))
    rt.extras["config_load_id"] = load_id
    await adopt(rt, config, f"{path} (load {load_id})")
    return True


async def catch_up(rt: Any) -> bool:
    """Adopt the newest stored config if it is newer than what this process runs."""
    known = rt.extras.get("config_load_id", 0)
    async with rt.db.connect() as connection:
        row = (
            await connection.execute(select(config_loads).where(config_loads.c.id > known).order_by(config_loads.c.id.desc()).limit(1))
        ).mappings().first()
    if row is None:
        return False
    rt.extras["config_load_id"] = row["id"]
    if row["text_hash"] == rt.config.text_hash:
        return False
    path = config_path(rt)
    try:
        config = parse_config(row["text"], base=path.resolve().parent, source=f"config load {row['id']}")
    except ConfigError as error:  # e.g. a template file missing on this machine
        log.error("config load %s refused here, keeping the running config: %s", row["id"],
                  "; ".join(str(p) for p in error.problems))
        return False
    await adopt(rt, config, f"config load {row['id']} ({row['source']})")
    return True


async def watch(rt: Any) -> None:
    """Follow published configs until cancelled: Redis pub/sub for speed, the table for sureness."""
    rt.extras.setdefault("config_load_id", await latest_load_id(rt))
    await record_versions(rt, rt.config)
    pubsub = None
    while True:
        try:
            if pubsub is None and rt.queue.redis is not None:
                pubsub = rt.queue.redis.pubsub()
                await pubsub.subscribe(CHANNEL)
            if pubsub is not None:
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
            else:
                await asyncio.sleep(POLL_SECONDS)
            await catch_up(rt)
        except asyncio.CancelledError:
            break
        except Exception as exc:  # noqa: BLE001 - keep following; Redis or the database may be back soon
            log.warning("config watcher: %s", exc)
            if pubsub is not None:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001
                    pass
            pubsub = None
            await asyncio.sleep(POLL_SECONDS)
    if pubsub is not None:
        try:
            await pubsub.aclose()
        except Exception:  # noqa: BLE001
            pass


def start(rt: Any) -> asyncio.Task[None]:
    """Start the watcher and make SIGHUP reload the config file; returns the watcher task."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_and_publish(rt)))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
        log.info("SIGHUP reload is not available in this process")
    task = loop.create_task(watch(rt))
    rt.extras["config_watcher"] = task
    return task


async def stop(rt: Any) -> None:
    task = rt.extras.pop("config_watcher", None)
    if task is not None:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass


async def versions(rt: Any) -> dict[str, list[dict[str, Any]]]:
    """Every version of every campaign, newest first: {campaign_id: [{version, took_effect_at}]}."""
    async with rt.db.connect() as connection:
        rows = await connection.execute(
            select(campaign_versions.c.campaign_id, campaign_versions.c.version, campaign_versions.c.took_effect_at)
            .order_by(campaign_versions.c.took_effect_at.desc())
        )
        found: dict[str, list[dict[str, Any]]] = {}
        for campaign_id, version, at in rows:
            found.setdefault(campaign_id, []).append({"version": version, "took_effect_at": at})
    return found


def checked(path: str | None) -> tuple[Config, str]:
    """Load and check a config file for `config reload`: (config, text); raises ConfigError."""
    chosen = Path(path or EXAMPLE_CONFIG)
    config = load_config(chosen)
    return config, chosen.read_text(encoding="utf-8")
