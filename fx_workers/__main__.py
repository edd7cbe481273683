"""``python -m fx_workers [--worker-id ID] [--max-messages K] [--check]``: run or health-check a worker."""

from __future__ import annotations

import argparse
import sys

from fx_workers.config import ConfigError, settings
from fx_workers.worker import check_health, default_worker_id, serve


def main(argv: list[str] | None = None) -> int:
    """Run the worker until a stop signal (exit 0), or with ``--check`` exit 0 if it is healthy, else 1."""
    parser = argparse.ArgumentParser(prog="python -m fx_workers", description=__doc__)
    parser.add_argument("--worker-id", default=default_worker_id(),
                        help="stable id for the Kafka client id and static membership; defaults to the hostname")
    parser.add_argument("--max-messages", type=int, default=None, help="exit after this many requests")
    parser.add_argument("--check", action="store_true", help="exit 0 if the worker's health key is fresh")
    args = parser.parse_args(argv)
    try:
        config = settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        healthy, detail = check_health(config, args.worker_id)
        print(detail)
        return 0 if healthy else 1
    serve(config, args.worker_id, args.max_messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
