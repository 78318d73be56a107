"""Prepare everything the chapters need, offline: ``python -m lib.setup`` (run by ``make``).

Three steps, each idempotent and quick when its result already exists: the system tools
(espeak-ng and friends), the pretrained models and assets, and the real test utterances.
When all three succeed a stamp file is written in the cache, so ``make`` can skip this
until ``lib/`` or the requirements change.

Stage: set-up, before every chapter (``make setup``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from lib.errors import exit_status
from lib.paths import cache_dir

STAMP = "setup.stamp"  # the Makefile names the same file


def _steps() -> list[tuple[str, Callable[[], object]]]:
    from lib import assets
    from lib.data import real, text

    return [
        ("system tools", text.ensure_system_tools),
        ("models and assets", assets.ensure_all_offline),
        ("real speech (test and dev)", real.load_all_real),
        ("training text beside the Bible (fortunes)", text.fortune_sentences),
    ]


def main() -> int:
    """Run the setup steps; print one line each; return the exit status."""
    def body() -> int:
        total = time.perf_counter()
        stamp = cache_dir() / STAMP
        stamp.unlink(missing_ok=True)
        for name, step in _steps():
            start = time.perf_counter()
            step()
            print(f"setup: {name:<22} ok  {time.perf_counter() - start:6.1f} s", flush=True)
        stamp.write_text(f"setup complete {datetime.now(UTC).isoformat()}\n")
        print(f"setup: done in {time.perf_counter() - total:.1f} s (cache: {cache_dir()})")
        return 0

    return exit_status(body)

if __name__ == "__main__":
    sys.exit(main())
