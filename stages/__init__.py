"""One Typer app per DVC stage: read params, call vpmel, write outputs."""

import time

STARTED = time.monotonic()  # this program's start, for vpmel.timings.stage_timer
