"""Live edits across a real `serve` and two `worker` processes: `config reload` and SIGHUP
swap the config without a restart; a broken file changes nothing and says why."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from core.demo import HEADER, demo_rows
from core.capture import listening_socket
from tests.harness import BASE_CONFIG, JANE, Harness, load_directory, wait_healthy

OLD = 'subject: "Dr. {{ hcp.last_name }}, join our webinar"'
NEW = 'subject: "Dr. {{ hcp.last_name }}, the webinar is tomorrow"'
NEWER = 'subject: "Last call, Dr. {{ hcp.last_name }}"'


async def _wait(predicate: Any, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        done = predicate()
        if asyncio.iscoroutine(done):
            done = await done
        if done:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_reload_reaches_serve_and_two_workers_and_a_broken_file_changes_nothing(harness: Harness, tmp_path: Path) -> None:
    rows = list(demo_rows(9))[2:]  # 8 more HCPs, anywhere: cardio-webinar has no audience
    text = io.StringIO()
    csv.writer(text).writerows([HEADER, *rows])
    await load_directory(harness.rt, tmp_path, text.getvalue())
    npis = [row[0] for row in rows]

    config = tmp_path / "trigger-email.yaml"
    config.write_text(BASE_CONFIG)
    settings = harness.rt.settings
    env = {
        **os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "SMTP_URL": settings.smtp_url, "SECRET_KEY": settings.secret_key, "TRIGGER_EMAIL_CONFIG": str(config),
        "LOG_LEVEL": "INFO", "LOG_FORMAT": "text",
    }
    listener = listening_socket()  # handed to serve with --fd: bound before it starts
    port = listener.getsockname()[1]
    logs = [tmp_path / name for name in ("serve.log", "worker1.log", "worker2.log")]
    commands = [["serve", "--fd", str(listener.fileno())], ["worker"], ["worker"]]
    processes = [
        subprocess.Popen([sys.executable, "-m", "trigger_email", *command], env=env, stdout=subprocess.DEVNULL,
                         stderr=open(log, "wb"), pass_fds=(listener.fileno(),))
        for command, log in zip(commands, logs)
    ]
    listener.close()
    serve, worker1, _worker2 = processes

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trigger_email", *args], env=env, capture_output=True, text=True, timeout=60)

    def logged(text: str, which: tuple[int, ...] = (0, 1, 2)) -> bool:
        return all(any(text in line for line in logs[i].read_text(errors="replace").splitlines()) for i in which)

    def reloaded_to(load: int) -> bool:
        return all(
            any("config reloaded from" in line and f"load {load}" in line for line in log.read_text(errors="replace").splitlines())
            for log in logs
        )

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=harness.auth, timeout=10) as client:

            await wait_healthy(client)
            await _wait(lambda: logged("Starting worker", (1, 2)), "both workers to start")

            async def send(npi: str) -> dict[str, Any]:
                accepted = (await client.post("/v1/triggers", json={"npi": npi, "campaign_id": "cardio-webinar"})).json()
                view: dict[str, Any] = {}

                async def decided() -> bool:
                    nonlocal view
                    view = (await client.get(f"/v1/triggers/{accepted['id']}")).json()
                    return view["status"] not in ("pending", "queued")

                await _wait(decided, f"trigger {accepted['id']} to be sent")
                assert view["status"] == "sent", view
                return view["messages"][0]

            async def cardio() -> dict[str, Any]:
                campaigns = (await client.get("/v1/campaigns")).json()["campaigns"]
                return next(c for c in campaigns if c["id"] == "cardio-webinar")

            first = await send(JANE)
            assert first["subject"] == "Dr. Doe, join our webinar"
            before = await cardio()
            assert first["campaign_version"] == before["version"] and before["version_since"]

            # 1. `config reload`: every process converges on the new subject and version.
            config.write_text(BASE_CONFIG.replace(OLD, NEW))
            reloaded = cli("config", "reload")
            assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
            assert "config reloaded (load 1," in reloaded.stdout
            await _wait(lambda: reloaded_to(1), "every process to reload")
            after = await cardio()
            assert after["version"] != before["version"] and after["subject"] == NEW.split(": ", 1)[1].strip('"')
            assert [v["version"] for v in after["versions"]] == [after["version"], before["version"]]
            for npi in npis[:4]:
                message = await send(npi)
                assert message["subject"].endswith(", the webinar is tomorrow"), message
                assert message["campaign_version"] == after["version"]

            # 2. A broken file: `config reload` refuses with the reason, SIGHUP too; nothing changes.
            config.write_text(BASE_CONFIG.replace(OLD, OLD.replace("subject", "subjct")))
            refused = cli("config", "reload")
            assert refused.returncode == 1
            assert "campaigns[1].subjct: unknown key; did you mean `subject`?" in refused.stderr
            worker1.send_signal(signal.SIGHUP)
            await _wait(lambda: logged("config reload refused", (1,)), "worker 1 to refuse the file")
            assert worker1.poll() is None  # still running
            message = await send(npis[4])
            assert message["subject"].endswith(", the webinar is tomorrow") and message["campaign_version"] == after["version"]
            assert (await cardio())["version"] == after["version"]

            # 3. SIGHUP on serve with a valid file: checked, stored, published, followed by the workers.
            config.write_text(BASE_CONFIG.replace(OLD, NEWER))
            serve.send_signal(signal.SIGHUP)
            await _wait(lambda: reloaded_to(2), "every process to follow serve's reload")
            message = await send(npis[5])
            assert message["subject"] == f"Last call, Dr. {rows[5][2]}"
            newest = await cardio()
            assert message["campaign_version"] == newest["version"] != after["version"]
            # No process failed while reloading (what arq prints when SIGTERM cuts a job short
            # at shutdown is the shutdown's business, not this test's).
            running = [log.read_text(errors="replace") for log in logs]
            assert all("Traceback" not in output for output in running), "\n----\n".join(running)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
