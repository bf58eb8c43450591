"""``python -m telemetry``: the ``telemetry`` command without the console script; ``run`` starts its children so."""

from __future__ import annotations

import sys

from telemetry.cli import main

sys.exit(main())
