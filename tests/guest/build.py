"""Build the test guest ahead of the tests, or see where it is cached.

    python -m tests.guest.build [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .image import default_cache, ensure_guest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.guest.build",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"cache directory (default {default_cache()})")
    args = parser.parse_args(argv)
    start = time.monotonic()
    guest = ensure_guest(args.cache)
    print(f"kernel:  {guest.kernel}\ninitrd:  {guest.initrd}\ncmdline: {guest.cmdline}")
    print(f"({time.monotonic() - start:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
