"""Reference: Nchan, the nginx pub/sub module in C, one worker, EventSource subscribers.

Writes an nginx configuration into ``--dir`` and replaces itself with nginx in the foreground: a
master and one worker, whose CPU time and memory are the ones read (``master_process off`` would
give a single process, but this Nchan build aborts on exit in that mode). Readings
are POSTed one message per request to ``/pub``; subscribers GET ``/v1/stream`` (any query string).
Every message gets ``event: reading``; Nchan chooses its own ids (``time:index``).

    python -m bench.servers.nchan --port 9003 --dir /tmp/nchan
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from bench.procs import raise_fd_limit

MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fds};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
load_module {module};

events {{
    worker_connections {fds};
}}

http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;

    server {{
        listen 127.0.0.1:{port} backlog=2048;

        location = /v1/stream {{
            nchan_subscriber eventsource;
            nchan_channel_id fan;
            nchan_eventsource_event reading;
        }}

        location = /pub {{
            nchan_publisher;
            nchan_channel_id fan;
            nchan_message_buffer_length 16;
            nchan_message_timeout 5m;
        }}
    }}
}}
"""


def available() -> bool:
    """Whether nginx and the Nchan module are installed (``apt-get install libnginx-mod-nchan``)."""
    return shutil.which("nginx") is not None and MODULE.exists()


def main() -> None:
    """Write the configuration and exec nginx in the foreground."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    hard = raise_fd_limit()
    args.dir.mkdir(parents=True, exist_ok=True)
    config = args.dir / "nginx.conf"
    config.write_text(CONFIG.format(dir=args.dir, module=MODULE, port=args.port, fds=hard))
    nginx = shutil.which("nginx")
    if nginx is None:
        raise SystemExit("nginx not found: apt-get install -y nginx libnginx-mod-nchan")
    os.execv(nginx, [nginx, "-c", str(config), "-e", str(args.dir / "error.log"), "-p", str(args.dir)])


if __name__ == "__main__":
    main()
