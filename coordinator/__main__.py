"""``python -m coordinator [--redis-url URL] [--namespace NS] [--coordinator-id ID]``.

Every other option comes from ``AGENTBUS_*`` environment variables (see ``CoordinatorSettings``).
"""

from __future__ import annotations

import argparse
import sys

from coordinator.daemon import run_daemon
from coordinator.settings import CoordinatorSettings

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    parser.add_argument("--redis-url", help="Redis URL (env AGENTBUS_REDIS_URL)")
    parser.add_argument("--namespace", help="key namespace (env AGENTBUS_NAMESPACE)")
    parser.add_argument("--coordinator-id", help="this coordinator's id (default host-pid)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = CoordinatorSettings(**overrides)
    except ValueError as e:
        print(f"invalid settings: {e}", file=sys.stderr)
        return 2
    return run_daemon(settings)


if __name__ == "__main__":
    sys.exit(main())
