"""`trigger-email dev` from an empty data dir serves a trigger end to end, stops cleanly on
Ctrl-C, and keeps its state across a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


pytestmark = [pytest.mark.slow, pytest.mark.default_backend]


def start_dev(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`trigger-email dev --port 0`: it binds a port the kernel picks and prints its URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("SMTP_URL", "DATABASE_URL", "REDIS_URL", "TRIGGER_EMAIL_CONFIG", "PUBLIC_URL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "trigger_email", "dev", "--port", "0", "--data-dir", str(data_dir)],
        env={**env, "LOG_LEVEL": "WARNING"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: dict[str, str] = {}
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("trigger-email dev is running at "):
            lines["base"] = line.removeprefix("trigger-email dev is running at ").split()[0]
        if line.startswith("API key: "):
            lines["key"] = line.removeprefix("API key: ").strip()
        if line.startswith("curl ") and "/v1/triggers" in line:
            lines["curl"] = line.strip()
            break
    assert "key" in lines and "base" in lines, process.stderr.read() if process.poll() is not None else "no API key or URL line"
    for _ in range(100):
        try:
            if httpx.get(f"{lines['base']}/health", timeout=1).status_code == 200:
                return process, lines
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("dev server did not become healthy")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    out, _err = process.communicate(timeout=30)
    assert process.returncode == 0
    return out


def wait_for(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_dev_serves_a_trigger_end_to_end_and_keeps_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    process, lines = start_dev(data_dir)
    base = lines["base"]
    auth = {"Authorization": f"Bearer {lines['key']}"}
    try:
        assert f"{base}/v1/triggers" in lines["curl"] and lines["key"] in lines["curl"]
        response = httpx.post(f"{base}/v1/triggers", json={"npi": "1234567893", "campaign_id": "asthma-launch"}, headers=auth)
        assert response.status_code == 202
        trigger_id = response.json()["id"]
        view = wait_for(lambda: (v := httpx.get(f"{base}/v1/triggers/{trigger_id}", headers=auth).json())["status"] == "sent" and v)
        assert view["messages"][0]["to"] == "jane.doe@clinic.example"
        outbox = httpx.get(f"{base}/dev/outbox", headers=auth).json()["messages"]
        assert len(outbox) == 1
        mail = outbox[0]
        assert mail["to"] == ["jane.doe@clinic.example"]
        assert mail["subject"] == "New asthma data for Pulmonary Disease practices"
        assert mail["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "Dear Dr. Doe" in mail["html"] and "Dear Dr. Doe" in mail["text"]
        assert {"from", "message_id", "date"} <= set(mail)
    finally:
        out = stop(process)
    assert "stopped" in out
    generated = {name: (data_dir / name).read_text() for name in ("hubspot_client_secret", "salesforce_events_secret", "secret_key")}
    assert all(len(value.strip()) >= 32 for value in generated.values()), "dev generates long secrets of its own"
    process, again = start_dev(data_dir)
    base = again["base"]
    try:
        assert again["key"] == lines["key"]
        assert {name: (data_dir / name).read_text() for name in generated} == generated, "a restart keeps them"
        view = httpx.get(f"{base}/v1/triggers/{trigger_id}", headers=auth).json()
        assert view["status"] == "sent"
        assert len(httpx.get(f"{base}/dev/outbox", headers=auth).json()["messages"]) == 1
    finally:
        stop(process)
