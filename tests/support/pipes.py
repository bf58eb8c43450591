"""A command whose stdout goes into a pipe the test reads and then closes, as ``| head -n 2`` does."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

WAIT_S = 20.0


def buffered_env() -> dict[str, str]:
    """The environment with Python's own buffering of stdout, as in a user's shell.

    With ``PYTHONUNBUFFERED`` set (CI and containers often set it) a failed write leaves nothing buffered,
    and the interpreter's last flush at exit, which fails in a user's shell, would pass unnoticed.
    """
    return {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}


@dataclass
class Piped:
    """The running command, the reading end of its stdout, and its stderr (a pipe of its own)."""

    process: asyncio.subprocess.Process
    stdout: asyncio.StreamReader
    reading_end: asyncio.ReadTransport

    async def line(self) -> str:
        """The next line the command printed."""
        async with asyncio.timeout(WAIT_S):
            return (await self.stdout.readline()).decode()

    def close_stdout(self) -> None:
        """Go away as ``head`` does once it has its lines: the command's next write to stdout fails."""
        self.reading_end.close()

    async def finish(self) -> tuple[int, str]:
        """Wait for the command to exit by itself; its exit code and everything it wrote to stderr."""
        async with asyncio.timeout(WAIT_S):
            _, stderr = await self.process.communicate()
        assert self.process.returncode is not None
        return self.process.returncode, stderr.decode()


@asynccontextmanager
async def piped(*argv: str) -> AsyncIterator[Piped]:
    """Run ``argv`` with its stdout into a pipe whose reading end the test holds; killed if still running after."""
    read_fd, write_fd = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=write_fd, stderr=asyncio.subprocess.PIPE, env=buffered_env()
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the command holds the only writing end: closing ours lets a read see its end
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    try:
        yield Piped(process, reader, transport)
    finally:
        transport.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
