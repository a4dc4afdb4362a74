"""Production refuses unsafe defaults: `serve`, `worker` and `bounces` exit 2 naming what is
missing; the example config carries no usable secret; `config check` warns about weak ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.harness import BASE_CONFIG
from trigger_email.cli import app

GOOD_KEY = "k" * 40
STRIPPED = ("SECRET_KEY", "TRIGGER_EMAIL_CONFIG", "HUBSPOT_CLIENT_SECRET", "SF_EVENTS_SECRET")


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    # Unreachable database and Redis: a process that wrongly starts fails or hangs, never passes.
    base.update(DATABASE_URL="postgresql://postgres@127.0.0.1:1/none", REDIS_URL="redis://127.0.0.1:1/0")
    try:
        return subprocess.run([sys.executable, "-m", "trigger_email", *command], env={**base, **env},
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{command} started instead of refusing: {exc.stderr!r}") from None


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    path = tmp_path / "trigger-email.yaml"
    path.write_text(BASE_CONFIG)
    return str(path)


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker"], ["bounces", "--port", "1"]])
def test_production_commands_refuse_to_start_without_safe_settings(command: list[str], config_file: str) -> None:
    missing_key = run(command, TRIGGER_EMAIL_CONFIG=config_file)
    assert missing_key.returncode == 2, missing_key.stderr
    assert "SECRET_KEY is not set" in missing_key.stderr and "at least 32" in missing_key.stderr
    assert "TRIGGER_EMAIL_CONFIG" not in missing_key.stderr

    short_key = run(command, TRIGGER_EMAIL_CONFIG=config_file, SECRET_KEY="x" * 31)
    assert short_key.returncode == 2, short_key.stderr
    assert "SECRET_KEY is 31 characters long: it must have at least 32" in short_key.stderr

    no_config = run(command, SECRET_KEY=GOOD_KEY)
    assert no_config.returncode == 2, no_config.stderr
    assert "TRIGGER_EMAIL_CONFIG is not set" in no_config.stderr and "SECRET_KEY" not in no_config.stderr

    neither = run(command)
    assert neither.returncode == 2
    assert "SECRET_KEY is not set" in neither.stderr and "TRIGGER_EMAIL_CONFIG is not set" in neither.stderr
    assert "Traceback" not in neither.stderr


def test_the_example_config_has_no_secret_of_its_own() -> None:
    runner = CliRunner()
    env = {"TRIGGER_EMAIL_CONFIG": "", "HUBSPOT_CLIENT_SECRET": None, "SF_EVENTS_SECRET": None, "SECRET_KEY": None}
    bare = runner.invoke(app, ["config", "check"], env=env)  # type: ignore[arg-type]
    assert bare.exit_code == 1
    assert "crm.hubspot.client_secret: environment variable HUBSPOT_CLIENT_SECRET is not set" in bare.output
    assert "crm.salesforce.events_secret: environment variable SF_EVENTS_SECRET is not set" in bare.output


def test_config_check_warns_about_weak_secrets() -> None:
    runner = CliRunner()
    weak = runner.invoke(app, ["config", "check"], env={  # type: ignore[arg-type]
        "TRIGGER_EMAIL_CONFIG": "", "HUBSPOT_CLIENT_SECRET": "dev-hubspot-secret", "SF_EVENTS_SECRET": "short",
        "SECRET_KEY": "tiny",
    })
    assert weak.exit_code == 0, weak.output
    assert "warning: crm.hubspot.client_secret: this value is published in the trigger-email repository" in weak.output
    assert "warning: crm.salesforce.events_secret: shorter than 16 characters" in weak.output
    assert "warning: SECRET_KEY: shorter than 32 characters" in weak.output
    strong = runner.invoke(app, ["config", "check"], env={  # type: ignore[arg-type]
        "TRIGGER_EMAIL_CONFIG": "", "HUBSPOT_CLIENT_SECRET": "h" * 24, "SF_EVENTS_SECRET": "s" * 24, "SECRET_KEY": GOOD_KEY,
    })
    assert strong.exit_code == 0 and "warning" not in strong.output, strong.output
