"""The YAML config: every error names its path and what was expected; `config check` exits 1."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from config import ConfigError, load_config, parse_config
from trigger_email.cli import app

VALID = """
public_url: https://trigger.pharma.example
sender: {from: "Medical Information <medinfo@pharma.example>"}
crm:
  hubspot: {access_token: "${HS_TOKEN}", client_secret: "${HS_SECRET:-fallback}"}
campaigns:
  - id: asthma-launch
    subject: "New data for {{ hcp.specialty }}"
    template: templates/asthma.html
    resend: {after: 3d, max: 2, subject: "Reminder: {{ subject }}"}
  - id: cardio
    subject: Webinar
    html: "<p>Hi {{ hcp.first_name }}</p>"
    cooldown: 12h
triggers:
  - {from: hubspot, on: form_submission, where: {form_id: "5f2c"}, send: asthma-launch}
"""


def problems(text: str, tmp_path: Path, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), base=tmp_path, env=env)
    return [str(problem) for problem in caught.value.problems]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "asthma.html").write_text("<p>Dear Dr. {{ hcp.last_name }}</p>")
    (tmp_path / "trigger-email.yaml").write_text(VALID)
    return tmp_path


def test_valid_config_loads_with_env_template_file_and_durations(config_dir: Path) -> None:
    config = load_config(config_dir / "trigger-email.yaml", env={"HS_TOKEN": "pat-123"})
    assert config.crm.hubspot is not None
    assert config.crm.hubspot.access_token == "pat-123"
    assert config.crm.hubspot.client_secret == "fallback"
    asthma = config.campaign("asthma-launch")
    assert asthma is not None and asthma.resend is not None
    assert asthma.resend.after.days == 3
    assert asthma.cooldown.days == 30  # the default
    assert "Dear Dr." in asthma.body
    assert config.campaign("cardio").cooldown.total_seconds() == 12 * 3600  # type: ignore[union-attr]
    assert config.triggers[0].on == "form_submission"  # `on:` is a key, not YAML 1.1's True


def test_bad_duration_names_its_path(config_dir: Path) -> None:
    found = problems(VALID.replace("after: 3d", "after: soon"), config_dir, HS_TOKEN="x")
    assert "campaigns[0].resend.after: expected a duration like 3d, got 'soon'" in found


def test_unknown_key_unknown_campaign_and_missing_env_are_all_reported(config_dir: Path) -> None:
    text = VALID.replace("cooldown: 12h", "cooldown: 12h\n    colour: blue").replace("send: asthma-launch", "send: asthma")
    found = problems(text, config_dir)
    assert "campaigns[1].colour: unknown key" in found
    assert "triggers[0].send: unknown campaign 'asthma'; did you mean `asthma-launch`?" in found
    assert "crm.hubspot.access_token: environment variable HS_TOKEN is not set" in found


def test_template_that_fails_to_render_is_a_config_error(config_dir: Path) -> None:
    (config_dir / "templates" / "asthma.html").write_text("<p>{{ hcp.last_name | no_such_filter }}</p>")
    found = problems(VALID, config_dir, HS_TOKEN="x")
    assert any(p.startswith("campaigns[0].template: template error") for p in found), found


def test_missing_template_file_and_both_bodies(config_dir: Path) -> None:
    text = VALID.replace("templates/asthma.html", "templates/missing.html").replace(
        'html: "<p>Hi {{ hcp.first_name }}</p>"', 'html: "<p>x</p>"\n    template: templates/asthma.html'
    )
    found = problems(text, config_dir, HS_TOKEN="x")
    assert any(p.startswith("campaigns[0].template: cannot read") for p in found), found
    assert any("campaigns[1]" in p and "exactly one of 'html'" in p for p in found), found


def test_config_check_cli_exit_codes(config_dir: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(config_dir / "trigger-email.yaml")], env={"HS_TOKEN": "t"})
    assert ok.exit_code == 0, ok.output
    assert "2 campaign(s), 1 trigger rule(s)" in ok.output
    (config_dir / "bad.yaml").write_text(VALID.replace("after: 3d", "after: soon").replace("max: 2", "max: lots"))
    bad = runner.invoke(app, ["config", "check", str(config_dir / "bad.yaml")], env={"HS_TOKEN": "t"})
    assert bad.exit_code == 1
    assert "campaigns[0].resend.after: expected a duration like 3d, got 'soon'" in bad.output
    assert "campaigns[0].resend.max" in bad.output


def test_shipped_example_config_is_valid() -> None:
    result = CliRunner().invoke(app, ["config", "check"], env={
        "TRIGGER_EMAIL_CONFIG": "", "HUBSPOT_CLIENT_SECRET": "h" * 24, "SF_EVENTS_SECRET": "s" * 24,
    })
    assert result.exit_code == 0, result.output


EXTENDS = """
public_url: https://trigger.pharma.example
sender: {from: "Medical Information <medinfo@pharma.example>"}
campaigns:
  - id: base
    subject: "Base {{ hcp.last_name }}"
    html: "<p>Base</p>"
    cooldown: 12h
    resend: {after: 3d}
  - {id: child, extends: base, template: templates/asthma.html, paused: true}
  - {id: grandchild, extends: child, subjects: [{text: A}, {text: B}], ab: {decide_after: 3d}}
  - {id: loop-a, extends: loop-b, subject: A, html: x}
  - {id: loop-b, extends: loop-a, subject: B, html: y}
"""


def test_extends_copies_overrides_and_replaces_alternatives(config_dir: Path) -> None:
    found = problems(EXTENDS, config_dir)
    assert found == [
        "campaigns[3].extends: extends loops: loop-a → loop-b → loop-a",
        "campaigns[4].extends: extends loops: loop-b → loop-a → loop-b",
    ]
    text = "\n".join(line for line in EXTENDS.splitlines() if "loop-" not in line)
    config = parse_config(text, base=config_dir, env={})
    child, grandchild = config.campaign("child"), config.campaign("grandchild")
    assert child is not None and grandchild is not None
    assert child.template == "templates/asthma.html" and "Dear Dr." in child.body  # template replaced html
    assert child.cooldown.total_seconds() == 12 * 3600 and child.resend is not None  # copied
    assert child.subject == "Base {{ hcp.last_name }}" and child.paused
    assert [v.text for v in grandchild.subjects or []] == ["A", "B"] and grandchild.subject == "A"
    assert grandchild.ab is not None and grandchild.ab.after is not None and grandchild.ab.after.days == 3


def test_campaign_versions_hash_the_settings(config_dir: Path) -> None:
    first = load_config(config_dir / "trigger-email.yaml", env={"HS_TOKEN": "x"})
    again = load_config(config_dir / "trigger-email.yaml", env={"HS_TOKEN": "x"})
    assert [c.version for c in first.campaigns] == [c.version for c in again.campaigns]
    assert len(first.campaign("cardio").version) == 12  # type: ignore[union-attr]
    (config_dir / "templates" / "asthma.html").write_text("<p>Dear Dr. {{ hcp.last_name }}, new text</p>")
    edited = load_config(config_dir / "trigger-email.yaml", env={"HS_TOKEN": "x"})
    assert edited.campaign("asthma-launch").version != first.campaign("asthma-launch").version  # type: ignore[union-attr]
    assert edited.campaign("cardio").version == first.campaign("cardio").version  # type: ignore[union-attr]
    paused = parse_config(VALID.replace("cooldown: 12h", "cooldown: 12h\n    paused: true"), base=config_dir, env={"HS_TOKEN": "x"})
    assert paused.campaign("cardio").version == first.campaign("cardio").version  # type: ignore[union-attr]
