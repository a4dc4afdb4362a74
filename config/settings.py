"""Process settings from the environment (the twelve-factor part of the config)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = "sqlite:///trigger-email.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    smtp_url: str = "smtp://127.0.0.1:1025"
    secret_key: str = Field(default="", repr=False)
    trigger_email_config: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    """`json` for one JSON object a line (for log shippers), `text` for people."""
    database_pgbouncer: bool = False
    """DATABASE_PGBOUNCER=true when DATABASE_URL points at PgBouncer in transaction mode:
    no prepared-statement caches (see docs/deploy.md)."""
    smtp_timeout: float = 30.0
    send_max_attempts: int = 8
    """SMTP 4xx / connection errors are retried this many times with exponential backoff."""
    sending_stuck_after: float = 300.0
    """Only for rows claimed before leases existed (no `claimed_until`): left in `sending`
    longer than this (seconds), they are marked `unknown`, never resent."""
    outbox_max_attempts: int = 8
    claim_lease: float = 15.0
    """Seconds a worker's claim on a message lasts unless renewed (it renews every third of
    it while alive): after a SIGKILL, a message whose SMTP transaction never started is back
    in `queued` this long after the last renewal."""
    shutdown_grace: float = 20.0
    """On SIGTERM, how long a worker lets SMTP transactions in flight finish before it stops."""
    trigger_max_attempts: int = 5
    """A decision that raises an unexpected error is retried with backoff this many times."""
    dev: bool = False
    metrics_token: str = Field(default="", repr=False)
    """Bearer token for `/metrics` (an API key works too); unset, `/metrics` is open under `dev` only."""
