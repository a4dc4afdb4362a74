"""The command line against the same database as the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.harness import JANE, Harness, cli_environment, drain, invoke_cli as invoke
from trigger_email.cli import app


@pytest.fixture
def cli_env(harness: Harness, tmp_path: Path) -> dict[str, str | None]:
    return cli_environment(harness, tmp_path, SMTP_URL=harness.rt.settings.smtp_url)


async def test_apikey_create_prints_a_working_key(harness: Harness, cli_env: dict[str, str]) -> None:
    result = await invoke(["apikey", "create", "crm-relay"], cli_env)
    assert result.exit_code == 0, result.output
    key = result.output.strip()
    assert key.startswith("te_") and len(key) > 30
    response = await harness.client.get("/v1/campaigns", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


async def test_trigger_from_the_shell_is_sent_by_the_worker(harness: Harness, cli_env: dict[str, str]) -> None:
    result = await invoke(["trigger", "--npi", JANE, "--campaign", "asthma-launch", "--data", '{"note": "from the shell"}'], cli_env)
    assert result.exit_code == 0, result.output
    accepted = json.loads(result.output)
    await drain(harness.rt)
    view = await harness.outcome(accepted["id"])
    assert view["status"] == "sent" and view["data"] == {"note": "from the shell"}
    assert "from the shell" in harness.smtp.messages[0].get_body(("html",)).get_content()


def test_trigger_rejects_bad_input_naming_the_option(cli_env: dict[str, str]) -> None:
    runner = CliRunner()
    bad_npi = runner.invoke(app, ["trigger", "--npi", "1234567890", "--campaign", "asthma-launch"], env=cli_env)
    assert bad_npi.exit_code == 2 and "--npi" in bad_npi.output and "check digit" in bad_npi.output
    bad_data = runner.invoke(app, ["trigger", "--npi", JANE, "--campaign", "asthma-launch", "--data", "[1]"], env=cli_env)
    assert bad_data.exit_code == 2 and "--data" in bad_data.output
    bad_campaign = runner.invoke(app, ["trigger", "--npi", JANE, "--campaign", "nope"], env=cli_env)
    assert bad_campaign.exit_code == 2 and "--campaign" in bad_campaign.output


async def test_campaign_pause_and_resume(harness: Harness, cli_env: dict[str, str]) -> None:
    paused = await invoke(["campaign", "pause", "asthma-launch"], cli_env)
    assert paused.exit_code == 0 and "paused" in paused.output
    assert (await harness.send())["status"] == "campaign_paused"
    await invoke(["campaign", "resume", "asthma-launch"], cli_env)
    assert (await harness.send())["status"] == "sent"
    unknown = await invoke(["campaign", "pause", "nope"], cli_env)
    assert unknown.exit_code == 1 and "unknown campaign" in unknown.output
