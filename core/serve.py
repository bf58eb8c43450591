"""Runs one service under uvicorn, configured the same way from the CLI and from the tests."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI


def server_config(app: FastAPI, host: str, port: int, graceful_s: float) -> uvicorn.Config:
    """uvicorn settings: our own JSON logs (no access log), uvloop, httptools, bounded graceful shutdown."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        loop="auto",
        http="auto",
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(graceful_s)),
        server_header=False,
    )


def serve(app: FastAPI, host: str, port: int, graceful_s: float) -> None:
    """Serve until SIGINT/SIGTERM; blocks."""
    uvicorn.Server(server_config(app, host, port, graceful_s)).run()
