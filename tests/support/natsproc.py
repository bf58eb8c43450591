"""A nats-server of one test's own, which the test may pause, resume, stop and start again."""

from __future__ import annotations

import os
import signal

from telemetry.natsserver import LocalNatsServer


class StoppableNatsServer(LocalNatsServer):
    """A LocalNatsServer that a test may freeze (SIGSTOP) to make acknowledgements time out."""

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again; it then processes what it received meanwhile."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
