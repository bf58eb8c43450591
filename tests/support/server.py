"""A service under test, served by uvicorn on an event loop and a thread of its own.

Serving an app inside the test's own event loop makes the server only as fast as the test's clients
let it be: a client that parses slowly, or a machine that is busy, holds the server back, and tests
of the server's timing or flow control then measure the test. Here the server runs as it does in
production (its own loop, uvloop or asyncio), and the test reaches into it only through
``on_server_loop``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import uvicorn
from fastapi import FastAPI
from support.net import wait_for_readyz

from core.httpprotocol import HttpLimits
from core.serve import server_config
from core.settings import Settings

ServerLoop = Literal["uvloop", "asyncio"]
SERVER_LOOPS: tuple[ServerLoop, ...] = ("uvloop", "asyncio")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
Result = TypeVar("Result")
DEFAULT_HTTP_LIMITS = HttpLimits.of(Settings.model_construct())  # the settings' defaults, whatever the environment


class ThreadedServer(uvicorn.Server):
    """uvicorn's server, noting the loop it runs on and the moment it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.listening = threading.Event()
        self.failure: BaseException | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self.listening.set()

    def run_in_thread(self, sock: socket.socket) -> None:
        """The thread's body: serve until ``should_exit``; a failure is kept for the test to raise."""
        try:
            self.run(sockets=[sock])
        except BaseException as err:  # SystemExit from a failed lifespan included: the test reports it
            self.failure = err
        finally:
            self.listening.set()


@asynccontextmanager
async def running(
    app: FastAPI,
    ready: bool = True,
    port: int = 0,
    http: str = "auto",
    forwarded_allow_ips: str = "127.0.0.1",
    loop: ServerLoop = "uvloop",
    http_limits: HttpLimits = DEFAULT_HTTP_LIMITS,
) -> AsyncIterator[str]:
    """Serve ``app`` on a socket bound beforehand; yields its URL once /readyz answers 200.

    With ``ready=False`` it yields as soon as the server listens (for tests of a service that cannot
    become ready); with a ``port``, a restarted service is found where its clients left it.
    ``http_limits`` are the connection limits the service's settings give (``HttpLimits.of(settings)``).
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    port = sock.getsockname()[1]
    config = server_config(app, "127.0.0.1", port, 1, forwarded_allow_ips, http_limits, http=http, loop=loop)
    server = ThreadedServer(config)
    thread = threading.Thread(target=server.run_in_thread, args=(sock,), name=f"server-{port}", daemon=True)
    thread.start()
    app.state.test_server = server
    url = f"http://127.0.0.1:{port}"
    try:
        if not await asyncio.to_thread(server.listening.wait, START_TIMEOUT_S):
            raise TimeoutError(f"the server on port {port} did not start within {START_TIMEOUT_S:g} s")
        if server.failure is not None:
            raise RuntimeError("the server failed to start") from server.failure
        if ready:
            await wait_for_readyz(url)
        yield url
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
        sock.close()
    if thread.is_alive():
        raise TimeoutError(f"the server on port {port} did not stop within {STOP_TIMEOUT_S:g} s")
    if server.failure is not None:
        raise RuntimeError("the server failed") from server.failure


async def on_server_loop(app: FastAPI, coroutine: Coroutine[Any, Any, Result]) -> Result:
    """Run ``coroutine`` on the loop of the server serving ``app``, and its result.

    The server's objects belong to that loop. It also runs after every callback the server had
    already scheduled (a request's clean-up, for instance), so it sees the state an answer left.
    """
    server: ThreadedServer = app.state.test_server
    assert server.loop is not None, "the app is not served"
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, server.loop))


async def suspended_chains() -> list[list[str]]:
    """For each task of the running loop, the coroutines suspended in it, from the task's own down (a future, or an
    awaitable of another kind, ends a chain): what a served request keeps alive while it waits."""
    chains = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            # This coroutine is running, not suspended. Reading its own cr_await crashed the test run now and then
            # (a segmentation fault here): CPython 3.11 most likely takes a running frame's next code unit, here an
            # attribute's inline cache, for the instruction it would resume at.
            continue
        chain: list[str] = []
        awaited = task.get_coro()
        while hasattr(awaited, "cr_code"):
            chain.append(awaited.cr_code.co_qualname)
            awaited = awaited.cr_await
        chains.append(chain)
    return chains
