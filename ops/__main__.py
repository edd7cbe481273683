"""``python -m ops {fetch,up,down,status,clean}``: the local stack's command line (``make up`` and co).

This machine has no Docker, so this small service manager does what compose would: write each
service's config, start it detached, wait for real health, and stop exactly what it started.
"""

from __future__ import annotations

import argparse
import fcntl
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fx_workers.config import ConfigError, load_settings
from ops.process import Layout, StackError
from ops.stack import clean, down, fetch, status, up

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def exclusive(layout: Layout) -> Iterator[None]:
    """One ``up``, ``down`` or ``clean`` at a time: two ``make up`` at once each started the services
    the other had not recorded yet, and the second PID file orphaned the first process."""
    layout.run.mkdir(parents=True, exist_ok=True)
    with (layout.run / "stack.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another `make up`, `make down` or `make clean-stack` to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("fetch", "up", "down", "status", "clean"))
    command = parser.parse_args(argv).command
    sys.stdout.reconfigure(line_buffering=True)  # progress lines and the error line stay in order in CI logs
    try:
        settings = load_settings()
        layout = Layout(settings.stack.dir)
        if command == "fetch":
            fetch(settings, layout)
        elif command == "status":
            status(settings, layout)
        else:
            with exclusive(layout):
                {"up": up, "down": down, "clean": clean}[command](settings, layout)
            if command == "up":
                status(settings, layout)
    except (StackError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
