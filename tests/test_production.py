"""Production shape: `trigger-email serve` and `trigger-email worker` as separate processes,
configured only by the environment, sharing the database and Redis."""

from __future__ import annotations

import pytest

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.capture import listening_socket
from tests.harness import BASE_CONFIG, JANE, Harness, wait_healthy

pytestmark = pytest.mark.default_backend


async def test_serve_and_worker_processes_deliver_a_trigger(harness: Harness, tmp_path: Path) -> None:
    config = tmp_path / "trigger-email.yaml"
    config.write_text(BASE_CONFIG)
    settings = harness.rt.settings
    env = {
        **os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "SMTP_URL": settings.smtp_url, "SECRET_KEY": settings.secret_key, "TRIGGER_EMAIL_CONFIG": str(config),
        "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json",
    }
    listener = listening_socket()  # handed over bound: nothing can take the port meanwhile
    port = listener.getsockname()[1]
    serve = subprocess.Popen([sys.executable, "-m", "trigger_email", "serve", "--fd", str(listener.fileno())],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(listener.fileno(),))
    listener.close()
    worker = subprocess.Popen([sys.executable, "-m", "trigger_email", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, headers=harness.auth) as client:
            deadline = time.monotonic() + 30
            await wait_healthy(client)
            accepted = await client.post("/v1/triggers", json={"npi": JANE, "campaign_id": "asthma-launch"})
            assert accepted.status_code == 202
            trigger_id = accepted.json()["id"]
            while (view := (await client.get(f"/v1/triggers/{trigger_id}")).json())["status"] in ("pending", "queued"):
                assert time.monotonic() < deadline + 30, view
                await asyncio.sleep(0.2)
            assert view["status"] == "sent"
            metrics = (await client.get("/metrics")).text
            assert 'trigger_email_message_states{status="sent"} 1.0' in metrics
    finally:
        for process in (serve, worker):
            process.terminate()
        outputs = [process.communicate(timeout=20)[1].decode() for process in (serve, worker)]
    assert [str(m["To"]) for m in harness.smtp.messages] == ["jane.doe@clinic.example"]
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to exit with it.
    assert serve.returncode in (0, -signal.SIGTERM), outputs[0]
    assert "Traceback" not in outputs[0] and "Traceback" not in outputs[1], outputs
