"""Weak-secret checks for `config check` and the production start."""

from __future__ import annotations

from typing import Any

MIN_SECRET = 16
"""A shared secret shorter than this is guessable or a placeholder."""

MIN_SECRET_KEY = 32
"""`SECRET_KEY` signs every tracking and unsubscribe link: `serve`, `worker` and `bounces`
refuse to start with a shorter one."""

SHIPPED_SECRETS = frozenset({
    # defaults the example config once carried, and values written in the docs and the demo
    "dev-hubspot-secret", "dev-salesforce-secret", "changeme", "change-me",
})
"""Values published in this repository: anyone can sign a webhook with them."""

SECRET_FIELDS = (
    ("crm.hubspot.client_secret", ("hubspot", "client_secret")),
    ("crm.hubspot.access_token", ("hubspot", "access_token")),
    ("crm.salesforce.events_secret", ("salesforce", "events_secret")),
    ("crm.salesforce.client_secret", ("salesforce", "client_secret")),
    ("crm.webhook.secret", ("webhook", "secret")),
)


def secret_warnings(config: Any, *, secret_key: str | None = None) -> list[str]:
    """One line per secret that is too short or was published in this repository."""
    found: list[tuple[str, str]] = []
    for path, (crm, name) in SECRET_FIELDS:
        section = getattr(config.crm, crm, None)
        value = getattr(section, name, None) if section is not None else None
        if value:
            found.append((path, str(value)))
    warnings = []
    for path, value in found:
        if value in SHIPPED_SECRETS:
            warnings.append(f"{path}: this value is published in the trigger-email repository; anyone can sign with it")
        elif len(value) < MIN_SECRET:
            warnings.append(f"{path}: shorter than {MIN_SECRET} characters; use a long random value")
    if secret_key is not None:
        if secret_key in SHIPPED_SECRETS:
            warnings.append("SECRET_KEY: this value is published in the trigger-email repository")
        elif len(secret_key) < MIN_SECRET_KEY:
            warnings.append(f"SECRET_KEY: shorter than {MIN_SECRET_KEY} characters; serve, worker and bounces refuse it")
    return warnings


def production_problems(secret_key: str, config_path: str | None) -> list[str]:
    """Why `serve`, `worker` or `bounces` must not start with these settings (empty: fine)."""
    problems = []
    if not secret_key:
        problems.append(f"SECRET_KEY is not set: set it to a random value of at least {MIN_SECRET_KEY} characters "
                        "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    elif len(secret_key) < MIN_SECRET_KEY:
        problems.append(f"SECRET_KEY is {len(secret_key)} characters long: it must have at least {MIN_SECRET_KEY}")
    elif secret_key in SHIPPED_SECRETS:
        problems.append("SECRET_KEY is a value published in the trigger-email repository")
    if not config_path:
        problems.append("TRIGGER_EMAIL_CONFIG is not set: point it at your config file "
                        "(the shipped example is only for `trigger-email dev`)")
    return problems
