"""``sqla-signed-urls`` and ``python -m sqla_signed_urls``: the command, or one line saying how to
get it.

The console script starts here rather than in :mod:`sqla_signed_urls.cli`, so that an install
without the ``cli`` extra (click and rich) prints ``pip install "sqla-signed-urls[cli]"`` and
exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import sys

from .exceptions import ConfigurationError

__all__ = ["main"]


def main(prog_name: str = "sqla-signed-urls") -> None:
    """Run the ``sqla-signed-urls`` command (exit status 2 when the ``cli`` extra is missing)."""
    try:
        from .cli import main as command
    except ConfigurationError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    command(prog_name=prog_name)


if __name__ == "__main__":
    main("python -m sqla_signed_urls")
