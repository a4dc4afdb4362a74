"""The `trigger-email` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Coroutine, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from config import ConfigError, Settings, load_config

app = typer.Typer(
    help="Trigger NPI-targeted emails from HubSpot, Salesforce and your own systems.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
config_app = typer.Typer(help="Check the YAML config; reload it into running processes.", no_args_is_help=True)
directory_app = typer.Typer(help="The HCP directory.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for /v1.", no_args_is_help=True)
campaign_app = typer.Typer(help="Pause and resume campaigns.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
suppress_app = typer.Typer(help="The suppression list.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(directory_app, name="directory")
app.add_typer(apikey_app, name="apikey")
app.add_typer(campaign_app, name="campaign")
app.add_typer(db_app, name="db")
app.add_typer(suppress_app, name="suppress")
messages_app = typer.Typer(help="Messages: settle the ones whose delivery is unknown.", no_args_is_help=True)
app.add_typer(messages_app, name="messages")
user_app = typer.Typer(help="Dashboard users (email and password).", no_args_is_help=True)
app.add_typer(user_app, name="user")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _settings() -> Settings:
    return Settings()


def _config(path: str | None = None):  # type: ignore[no-untyped-def]
    try:
        return load_config(path or _settings().trigger_email_config)
    except ConfigError as error:
        _print_config_error(error)
        raise typer.Exit(1) from None


def _print_config_error(error: ConfigError) -> None:
    err.print(f"[red]config error[/red] in {error.source}: {len(error.problems)} problem(s)", highlight=False)
    for problem in error.problems:
        err.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
    for warning in error.warnings:
        err.print(f"  warning: {warning}", highlight=False, markup=False, soft_wrap=True)


def _production_settings() -> Settings:
    """The settings of `serve`, `worker` and `bounces`, or exit 2 naming what is missing: no
    production process runs on a guessable SECRET_KEY or the shipped example config."""
    from config.secrets import production_problems

    settings = _settings()
    problems = production_problems(settings.secret_key, settings.trigger_email_config)
    if problems:
        err.print("[red]refusing to start:[/red]", highlight=False)
        for problem in problems:
            err.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
        err.print("  (`trigger-email dev` runs without them, with generated secrets and the example config)",
                  highlight=False, markup=False)
        raise typer.Exit(2)
    return settings


async def _runtime(*, redis: bool = False):  # type: ignore[no-untyped-def]
    from core.runtime import build_runtime

    settings = _settings()
    return await build_runtime(settings, config=_config(settings.trigger_email_config), connect_redis=redis)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@config_app.command("check")
def config_check(file: Optional[Path] = typer.Argument(None, help="The config file (default: $TRIGGER_EMAIL_CONFIG or the example).")) -> None:
    """Validate a config file: every error with its path, exit 1; or a summary, exit 0.
    Weak secrets (short, or published in this repository) are warned about."""
    from config import format_duration
    from config.secrets import secret_warnings

    config = _config(str(file) if file else None)
    warnings = [str(warning) for warning in config.warnings] + run(_directory_warnings(config))
    crms = [name for name in ("hubspot", "salesforce", "webhook") if getattr(config.crm, name) is not None]
    out.print(
        f"OK: {len(config.campaigns)} campaign(s), {len(config.triggers)} trigger rule(s), "
        f"CRM: {', '.join(crms) or 'none'}",
        highlight=False,
    )
    for campaign in config.campaigns:
        resend = f", resend after {format_duration(campaign.resend.after)} ×{campaign.resend.max}" if campaign.resend else ""
        variants = f", {len(campaign.subjects)} subject variants" if campaign.subjects else ""
        files = f", {len(campaign.files)} attachment(s)" if campaign.files else ""
        out.print(
            f"  {campaign.id} ({campaign.kind}): cooldown {format_duration(campaign.cooldown)}{resend}{variants}{files}"
            f", version {campaign.version}",
            highlight=False, markup=False, soft_wrap=True,
        )
    for warning in warnings:
        out.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    for warning in secret_warnings(config, secret_key=_settings().secret_key or None):
        err.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)


@config_app.command("reload")
def config_reload(file: Optional[Path] = typer.Argument(None, help="The config file (default: $TRIGGER_EMAIL_CONFIG).")) -> None:
    """Check the config file and, if valid, make every running serve and worker use it (no
    restart). A file with errors changes nothing: the problems are printed, exit 1."""
    import logging as _logging_module

    from core import live_config

    settings = _settings()
    chosen = str(file) if file else settings.trigger_email_config
    try:
        config, text = live_config.checked(chosen)
    except ConfigError as error:
        _logging_module.getLogger("trigger_email").error("config reload refused: %s", error)
        err.print("config reload refused, the running config stays:", highlight=False)
        _print_config_error(error)
        raise typer.Exit(1) from None

    async def go() -> int:
        from core.runtime import build_runtime

        rt = await build_runtime(settings, config=config, connect_redis=True)
        try:
            return await live_config.publish(rt, config, text, str(Path(chosen or "").resolve() if chosen else "example"))
        finally:
            await rt.aclose()

    load_id = run(go())
    out.print(f"config reloaded (load {load_id}, sha256 {config.text_hash[:12]}); running processes follow within seconds",
              highlight=False, soft_wrap=True)
    for campaign in config.campaigns:
        out.print(f"  {campaign.id}: version {campaign.version}", highlight=False, markup=False)
    for warning in config.warnings:
        out.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)


async def _directory_warnings(config: Any) -> list[str]:
    """Audience specialties no HCP in the loaded directory has (a typo reaches nobody).
    Silent when there is no database or no directory yet."""
    from sqlalchemy import select
    from sqlalchemy.engine import make_url

    from config.templating import nearest
    from core.db import Database, hcps

    wanted = [(index, c.audience.specialties or []) for index, c in enumerate(config.campaigns)]
    if not any(specialties for _index, specialties in wanted):
        return []
    url = _settings().database_url
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    except Exception:  # noqa: BLE001
        return []
    if parsed.drivername.startswith("sqlite") and not (parsed.database and Path(parsed.database).is_file()):
        return []  # do not create a database file just to look into it
    db = Database(url)
    try:
        async with db.connect() as connection:
            known = set((await connection.execute(select(hcps.c.specialty).distinct())).scalars())
    except Exception:  # noqa: BLE001 - no database here: nothing to compare with
        return []
    finally:
        await db.dispose()
    known.discard("")
    if not known:
        return []
    warnings = []
    for index, specialties in wanted:
        for position, specialty in enumerate(specialties):
            if specialty not in known:
                guess = nearest(specialty, known)
                hint = f"; did you mean `{guess}`?" if guess else ""
                warnings.append(
                    f"campaigns[{index}].audience.specialties[{position}]: no HCP in the directory has specialty {specialty!r}{hint}"
                )
    return warnings


@directory_app.command("import")
def directory_import(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV with a header row: npi,first_name,last_name,credential,specialty,state,email")) -> None:
    """Upsert HCPs and their addresses from a CSV; bad rows are reported by line and skipped."""
    from core.clock import Clock
    from core.db import Database
    from core.directory import DirectoryFileError, import_csv

    async def go() -> Any:
        db = Database(_settings().database_url, pgbouncer=_settings().database_pgbouncer)
        size = file.stat().st_size
        with Progress(TextColumn("importing"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=err) as progress:
            task = progress.add_task("import", total=size)
            try:
                return await import_csv(db, file, now=Clock().now(), progress=lambda done: progress.update(task, completed=done))
            finally:
                await db.dispose()

    try:
        report = run(go())
    except DirectoryFileError as error:
        err.print(f"[red]{file}[/red]: {error}", highlight=False)
        raise typer.Exit(1) from None
    for line, problem in report.skipped[:200]:
        err.print(f"line {line}: {problem} (skipped)", highlight=False, markup=False)
    if len(report.skipped) > 200:
        err.print(f"… and {len(report.skipped) - 200} more skipped rows", highlight=False)
    out.print(f"Imported {report.hcps} HCP row(s) and {report.emails} address(es) from {report.rows} row(s); skipped {len(report.skipped)}.", highlight=False)


@apikey_app.command("create")
def apikey_create(
    name: str = typer.Argument(..., help="Who uses the key, e.g. 'crm-relay'."),
    scope: Optional[list[str]] = typer.Option(
        None, "--scope", help="triggers:write, read or admin; repeat for several (default: all three)."
    ),
) -> None:
    """Create an API key and print it (it is stored hashed and cannot be shown again)."""
    from core.apikeys import create_key, scopes_text
    from core.clock import Clock
    from core.db import Database

    scopes = [part for value in scope or [] for part in value.replace(",", " ").split()] or None
    try:
        scopes_text(scopes)
    except ValueError as exc:
        err.print(f"--scope: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None

    async def go() -> str:
        db = Database(_settings().database_url, pgbouncer=_settings().database_pgbouncer)
        try:
            return await create_key(db, name, Clock().now(), scopes)
        finally:
            await db.dispose()

    key = run(go())
    print(key)


@apikey_app.command("list")
def apikey_list() -> None:
    """Show every API key: name, prefix, scopes, when it was created, last used, revoked."""
    from core.apikeys import list_keys
    from core.db import Database

    async def go() -> list[dict[str, Any]]:
        db = Database(_settings().database_url)
        try:
            return await list_keys(db)
        finally:
            await db.dispose()

    def when(value: Any) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else "-"

    table = Table("name", "prefix", "scopes", "created", "last used", "revoked")
    for row in run(go()):
        table.add_row(row["name"], row["prefix"], row["scopes"], when(row["created_at"]), when(row["last_used_at"]),
                      when(row["revoked_at"]))
    out.print(table)


@apikey_app.command("revoke")
def apikey_revoke(name: str = typer.Argument(..., help="The key's name (every key of that name) or its prefix.")) -> None:
    """Revoke API keys by name or prefix: they are refused (401) from the next request on."""
    from core.apikeys import revoke_key
    from core.clock import Clock
    from core.db import Database

    async def go() -> int:
        db = Database(_settings().database_url)
        try:
            return await revoke_key(db, name, Clock().now())
        finally:
            await db.dispose()

    revoked = run(go())
    if not revoked:
        err.print(f"no active API key named {name!r}", highlight=False, markup=False)
        raise typer.Exit(1)
    print(f"revoked {revoked} API key(s) {name}")


@app.command("trigger")
def trigger(
    npi: str = typer.Option(..., "--npi", help="The HCP's 10-digit NPI."),
    campaign: str = typer.Option(..., "--campaign", help="The campaign id."),
    data: str = typer.Option("{}", "--data", help="Template data as a JSON object."),
) -> None:
    """Trigger a campaign email, as POST /v1/triggers does."""
    from core.npi import npi_problem
    from core.triggers import accept_trigger

    problem = npi_problem(npi)
    if problem:
        err.print(f"--npi: {problem}", highlight=False)
        raise typer.Exit(2)
    from webhooks.common import HTTPProblem, parse_json

    try:
        payload = parse_json(data)
    except HTTPProblem as exc:
        err.print(f"--data: {exc.reason.replace('body', 'the value')}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    if not isinstance(payload, dict):
        err.print("--data: must be a JSON object", highlight=False)
        raise typer.Exit(2)

    async def go() -> Any:
        rt = await _runtime(redis=True)
        try:
            if rt.config.campaign(campaign) is None:
                err.print(f"--campaign: unknown campaign {campaign!r}", highlight=False)
                raise typer.Exit(2)
            return await accept_trigger(rt, npi=npi, campaign_id=campaign, data=payload, source="cli")
        finally:
            await rt.aclose()

    accepted = run(go())
    print(json.dumps({"id": accepted.id, "status": accepted.status}))


def _campaign_state(campaign_id: str, paused: bool) -> None:
    from core.campaigns import set_paused

    async def go() -> None:
        rt = await _runtime()
        try:
            if rt.config.campaign(campaign_id) is None:
                err.print(f"unknown campaign {campaign_id!r}", highlight=False)
                raise typer.Exit(1)
            async with rt.db.begin() as connection:
                await set_paused(connection, campaign_id, paused, rt.clock.now())
        finally:
            await rt.aclose()

    run(go())
    print(f"campaign {campaign_id} {'paused' if paused else 'resumed'}")


@campaign_app.command("pause")
def campaign_pause(campaign_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Pause a campaign: new triggers end as campaign_paused, resends are held back."""
    _campaign_state(campaign_id, True)


@campaign_app.command("resume")
def campaign_resume(campaign_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Resume a paused campaign."""
    _campaign_state(campaign_id, False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema (DATABASE_URL) to the latest revision, keeping all rows."""
    from core.db import Database
    from core.schema import upgrade

    async def go() -> tuple[str | None, str | None]:
        db = Database(_settings().database_url, pgbouncer=_settings().database_pgbouncer)
        try:
            return await upgrade(db)
        finally:
            await db.dispose()

    before, after = run(go())
    print(f"database at revision {after}" + (f" (was {before})" if before != after else " (already current)"))


@suppress_app.command("add")
def suppress_add(
    target: str = typer.Argument(..., help="An NPI or an email address."),
    reason: str = typer.Option("manual", "--reason"),
) -> None:
    """Stop all marketing email to an NPI or an address."""
    _suppress(target, reason, remove=False)


@suppress_app.command("remove")
def suppress_remove(target: str = typer.Argument(..., help="An NPI or an email address.")) -> None:
    """Lift the suppressions of an NPI or an address."""
    _suppress(target, None, remove=True)


def _suppress(target: str, reason: str | None, *, remove: bool) -> None:
    from core.directory import email_problem
    from core.npi import npi_problem
    from core.suppression import add_suppression, remove_suppressions

    is_address = "@" in target
    problem = email_problem(target) if is_address else npi_problem(target)
    if problem:
        err.print(f"target: {problem}", highlight=False)
        raise typer.Exit(2)
    kwargs = {"address": target} if is_address else {"npi": target}

    async def go() -> int:
        rt = await _runtime()
        try:
            async with rt.db.begin() as connection:
                if remove:
                    return await remove_suppressions(connection, **kwargs)
                return await add_suppression(connection, reason=reason or "manual", now=rt.clock.now(), **kwargs)
        finally:
            await rt.aclose()

    result = run(go())
    print(f"removed {result} suppression(s) for {target}" if remove else f"suppressed {target} ({reason})")


@suppress_app.command("list")
def suppress_list() -> None:
    """Show the suppression list."""
    from core.suppression import list_suppressions

    async def go() -> list[dict[str, Any]]:
        rt = await _runtime()
        try:
            async with rt.db.connect() as connection:
                return await list_suppressions(connection)
        finally:
            await rt.aclose()

    rows = run(go())
    table = Table("npi", "email", "campaign", "reason", "since")
    for row in rows:
        table.add_row(row["npi"] or "", row["address"] or "", row["campaign_id"] or "(all)", row["reason"], f"{row['created_at']:%Y-%m-%d %H:%M}")
    out.print(table)


@messages_app.command("resolve")
def messages_resolve(
    message_id: str = typer.Argument(..., metavar="ID", help="The message id (msg_…), as GET /v1/triggers/{id} shows it."),
    verdict: str = typer.Argument(..., metavar="sent|resend", help="sent: it was delivered; resend: it was not, send it again."),
) -> None:
    """Settle a message whose delivery is `unknown` (its SMTP transaction was cut off)."""
    from core.sending import NotUnknown, resolve_message

    if verdict not in ("sent", "resend"):
        err.print(f"verdict: expected sent or resend, got {verdict!r}", highlight=False, markup=False)
        raise typer.Exit(2)

    async def go() -> dict[str, Any]:
        rt = await _runtime(redis=True)
        try:
            return await resolve_message(rt, message_id, verdict)
        finally:
            await rt.aclose()

    try:
        result = run(go())
    except NotUnknown as error:
        err.print(f"ID: {error}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    done = "recorded as sent" if verdict == "sent" else "queued to be sent again"
    print(f"message {message_id} {done} (trigger {result['trigger_id']})")


@user_app.command("create")
def user_create(
    email: str = typer.Argument(..., metavar="EMAIL", help="The address the user logs in with."),
    generate: bool = typer.Option(False, "--generate", help="Generate a password and print it instead of asking for one."),
    reset: bool = typer.Option(False, "--reset", help="Set a new password for an existing user."),
) -> None:
    """Create a dashboard user; the password is asked for (or generated and printed) and stored with scrypt."""
    from core.clock import Clock
    from core.db import Database
    from core.users import MIN_PASSWORD, UserError, create_user, generate_password, normalise_email

    try:
        email = normalise_email(email)
    except UserError as error:
        err.print(str(error), highlight=False, markup=False)
        raise typer.Exit(2) from None
    if generate:
        password = generate_password()
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        if len(password) < MIN_PASSWORD:
            err.print(f"password: at least {MIN_PASSWORD} characters", highlight=False)
            raise typer.Exit(2)

    async def go() -> dict[str, Any]:
        db = Database(_settings().database_url)
        try:
            return await create_user(db, email, password, Clock().now(), replace=reset)
        finally:
            await db.dispose()

    try:
        run(go())
    except UserError as error:
        err.print(str(error), highlight=False, markup=False)
        raise typer.Exit(1) from None
    print(f"Dashboard login: {email} / {password}" if generate else f"user {email} {'updated' if reset else 'created'}")


@user_app.command("list")
def user_list() -> None:
    """Show the dashboard users."""
    from core.db import Database
    from core.users import list_users

    async def go() -> list[dict[str, Any]]:
        db = Database(_settings().database_url)
        try:
            return await list_users(db)
        finally:
            await db.dispose()

    table = Table("email", "created", "last login")
    for row in run(go()):
        last = f"{row['last_login_at']:%Y-%m-%d %H:%M}" if row["last_login_at"] else "never"
        table.add_row(row["email"], f"{row['created_at']:%Y-%m-%d %H:%M}", last)
    out.print(table)


@user_app.command("delete")
def user_delete(email: str = typer.Argument(..., metavar="EMAIL")) -> None:
    """Delete a dashboard user; their sessions stop working at the next request."""
    from core.db import Database
    from core.users import delete_user

    async def go() -> bool:
        db = Database(_settings().database_url)
        try:
            return await delete_user(db, email)
        finally:
            await db.dispose()

    if not run(go()):
        err.print(f"no user {email}", highlight=False)
        raise typer.Exit(1)
    print(f"user {email} deleted")


@app.command("serve")
def serve(
    host: str = typer.Option("0.0.0.0", "--host"),
    port: int = typer.Option(8000, "--port"),
    fd: Optional[int] = typer.Option(None, "--fd", help="Serve on this inherited, already listening socket (socket activation) instead of --host/--port."),
) -> None:
    """Run the HTTP service (webhooks, trigger API, tracking) with uvicorn."""
    import uvicorn

    from webhooks.app import create_app

    settings = _production_settings()
    _config(settings.trigger_email_config)
    _logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(), host=host, port=port, fd=fd, log_level=settings.log_level.lower(), proxy_headers=True)


@app.command("worker")
def worker() -> None:
    """Run an arq worker: decisions, sends, CRM events, the due-work sweep and the CRM pusher."""
    from workers.settings import run as run_worker

    settings = _production_settings()
    _config(settings.trigger_email_config)
    _logging(settings.log_level, settings.log_format)
    _run_worker_through_redis_outages(run_worker)


def _run_worker_through_redis_outages(run: Any, pause: float = 2.0) -> None:
    """arq's worker stops when Redis goes away (a restart, a failover). Nothing is lost: the
    database holds the work and the sweep re-enqueues it, so start the worker again once
    Redis answers instead of leaving the process dead until a supervisor notices."""
    import signal
    import time

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    while True:
        try:
            run()
            return
        except (RedisConnectionError, RedisTimeoutError, ConnectionError) as exc:
            logging.getLogger("trigger_email.worker").warning("Redis unavailable (%s); starting the worker again in %.0f s", exc, pause)
            # arq's handlers live on a loop that is not running now: let SIGTERM/SIGINT stop us.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            time.sleep(pause)


bounces_app = typer.Typer(
    help="Receive bounce reports over SMTP (no sub-command), or classify saved ones (`bounces classify`).",
    invoke_without_command=True,
)
app.add_typer(bounces_app, name="bounces")


@bounces_app.callback()
def bounces(
    ctx: typer.Context,
    host: str = typer.Option("0.0.0.0", "--host"),
    port: int = typer.Option(2525, "--port"),
) -> None:
    """Receive bounce reports (RFC 3464) and complaints (RFC 5965) over SMTP."""
    if ctx.invoked_subcommand is not None:
        return
    from core.bounce_listener import start_bounce_listener

    settings = _production_settings()
    _config(settings.trigger_email_config)
    _logging(settings.log_level, settings.log_format)

    async def go() -> None:
        rt = await _runtime(redis=True)
        server = await start_bounce_listener(rt, host, port)
        bound = server.sockets[0].getsockname()[1] if server.sockets else port  # --port 0: the kernel's pick
        out.print(f"Listening for bounces on smtp://{host}:{bound}", highlight=False)
        try:
            await server.serve_forever()
        finally:
            server.close()
            await rt.aclose()

    try:
        run(go())
    except KeyboardInterrupt:
        pass


@bounces_app.command("classify")
def bounces_classify(
    files: list[str] = typer.Argument(..., help="Raw messages (.eml); `-` reads one from standard input."),
) -> None:
    """Classify saved bounce messages with the listener's own parser: one JSON line per
    message {"file", "kind", "reason", "status", "recipients", "diagnostic"}. Needs no
    config or database. Exits 0 when every file was read."""
    from core.bounces import classify_message

    unreadable = 0
    for name in files:
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as error:
            err.print(f"{name}: cannot read: {error.strerror or error}", highlight=False, markup=False)
            unreadable += 1
            continue
        print(json.dumps(classify_message(raw).as_json(name), ensure_ascii=False), flush=True)
    if unreadable:
        raise typer.Exit(1)


@app.command("dev")
def dev(
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    data_dir: Path = typer.Option(Path("trigger-email-data"), "--data-dir", help="Where the SQLite database, Redis and captured mail live."),
    config: Optional[Path] = typer.Option(None, "--config", help="Config file (default: the shipped example)."),
    directory: Optional[Path] = typer.Option(None, "--directory", help="HCP directory CSV (default: a generated demo of 1,000 HCPs)."),
    host: str = typer.Option("127.0.0.1", "--host"),
) -> None:
    """Everything in one process: web + worker, SQLite, embedded Redis, a local SMTP capture."""
    from trigger_email.dev import run_dev

    try:
        run(run_dev(port=port, data_dir=data_dir, config_path=config, directory=directory, host=host))
    except KeyboardInterrupt:
        pass
    except ConfigError as error:
        _print_config_error(error)
        raise typer.Exit(1) from None


def main() -> None:  # pragma: no cover
    app(prog_name="trigger-email")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
