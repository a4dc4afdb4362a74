"""Tracking and unsubscribe tokens are credentials for one recipient: uvicorn's access log
shows the route, never the token."""

from __future__ import annotations

import asyncio
import logging

import httpx
import uvicorn

from core.capture import listening_socket
from tests.harness import Harness
from tests.test_tracking import pixel_url, sent_email, tracked_links
from tests.test_unsubscribe import unsubscribe_url
from webhooks.app import create_app


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(uvicorn.logging.AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s',
                                                          use_colors=False))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_tokens_are_redacted_in_the_access_log(harness: Harness) -> None:
    _, email = await sent_email(harness)
    public = harness.rt.config.public_url
    listener = listening_socket()
    port = listener.getsockname()[1]
    paths = [url.removeprefix(public) for url in (pixel_url(email), tracked_links(email)[0], unsubscribe_url(email))]
    tokens = [path.rsplit("/", 1)[1] for path in paths]
    collect = Collect()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(collect)
    level = access.level
    access.setLevel(logging.INFO)
    server = uvicorn.Server(uvicorn.Config(create_app(harness.rt), lifespan="off",
                                           access_log=True, log_config=None))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for path in paths:
                assert (await client.get(path)).status_code in (200, 302)
            assert (await client.head(paths[2])).status_code == 200
            assert (await client.get("/health")).status_code == 200
    finally:
        server.should_exit = True
        await serving
        access.removeHandler(collect)
        access.setLevel(level)
    text = "\n".join(collect.lines)
    assert len(collect.lines) == 5, text
    for token in tokens:
        assert token not in text
    assert '"GET /t/o/… HTTP/1.1" 200' in text and '"GET /t/c/… HTTP/1.1" 302' in text
    assert '"GET /u/… HTTP/1.1" 200' in text and '"HEAD /u/… HTTP/1.1" 200' in text
    assert '"GET /health HTTP/1.1" 200' in text
