"""`config check` is a net no mistake slips through: each fixture under tests/fixtures/config
holds one kind of mistake and, in its `# expect:` / `# warning:` comments, the exact lines
the check must print. Every error of every kind is reported in the same run."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from config import load_config
from trigger_email.cli import app

FIXTURES = Path(__file__).parent / "fixtures" / "config"
MISTAKES = sorted(path.name for path in FIXTURES.glob("*.yaml") if "# expect:" in path.read_text())


def expected(path: Path, marker: str) -> list[str]:
    prefix = f"# {marker}: "
    return [
        line[len(prefix):].replace("{dir}", str(path.parent.resolve()))
        for line in path.read_text().splitlines() if line.startswith(prefix)
    ]


def check(path: Path, **env: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["config", "check", str(path)], env={"DATABASE_URL": "sqlite:////nonexistent/te.db", **env})
    return result.exit_code, [line.strip() for line in result.output.splitlines()]


@pytest.mark.parametrize("name", MISTAKES)
def test_each_mistake_is_reported_with_its_exact_text(name: str) -> None:
    path = FIXTURES / name
    code, lines = check(path)
    assert code == 1, lines
    errors = expected(path, "expect")
    for error in errors:
        assert error in lines, f"{error!r} not in\n" + "\n".join(lines)
    assert f"{len(errors)} problem(s)" in " ".join(lines[:3]), lines  # nothing more, nothing less
    for warning in expected(path, "warning"):
        assert f"warning: {warning}" in lines, lines


def test_warnings_do_not_fail_the_check_and_are_shown() -> None:
    path = FIXTURES / "warnings-only.yaml"
    code, lines = check(path)
    assert code == 0, lines
    warnings = expected(path, "warning")
    assert sorted(line for line in lines if line.startswith("warning:")) == sorted(f"warning: {w}" for w in warnings)


def test_base_fixture_is_valid_and_durations_print_as_written() -> None:
    code, lines = check(FIXTURES / "base.yaml")
    assert code == 0, lines
    asthma = next(line for line in lines if line.startswith("asthma-launch"))
    assert "cooldown 30d, resend after 3d ×2" in asthma
    assert "0:00:00" not in "\n".join(lines)


def test_durations_in_minutes_print_as_minutes(tmp_path: Path) -> None:
    text = (FIXTURES / "base.yaml").read_text().replace("after: 3d", "after: 10m").replace("cooldown: 30d", "cooldown: 12h")
    (tmp_path / "c.yaml").write_text(text)
    code, lines = check(tmp_path / "c.yaml")
    assert code == 0, lines
    assert "asthma-launch (marketing): cooldown 12h, resend after 10m ×2" in " ".join(lines)


def test_unknown_specialties_warn_when_the_directory_is_loaded(tmp_path: Path) -> None:
    import asyncio

    from core.db import Database
    from core.schema import upgrade
    from tests.harness import load_directory

    url = f"sqlite:///{tmp_path / 'te.db'}"

    async def fill() -> None:
        db = Database(url)
        await upgrade(db)
        rt = type("R", (), {"db": db, "clock": __import__("core.clock", fromlist=["Clock"]).Clock()})()
        await load_directory(rt, tmp_path)  # type: ignore[arg-type]
        await db.dispose()

    asyncio.run(fill())
    text = (FIXTURES / "base.yaml").read_text().replace('["Pulmonary Disease"]', '["Pulmonary Diseases", "Astrology"]')
    (tmp_path / "c.yaml").write_text(text)
    code, lines = check(tmp_path / "c.yaml", DATABASE_URL=url)
    assert code == 0, lines
    assert ("warning: campaigns[0].audience.specialties[0]: no HCP in the directory has specialty "
            "'Pulmonary Diseases'; did you mean `Pulmonary Disease`?") in lines
    assert "warning: campaigns[0].audience.specialties[1]: no HCP in the directory has specialty 'Astrology'" in lines


def test_nested_data_from_data_example_renders_and_valid_config_loads() -> None:
    config = load_config(FIXTURES / "base.yaml")
    assert config.campaign("asthma-launch") is not None
    assert not config.warnings
