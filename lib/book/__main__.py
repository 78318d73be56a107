"""``python -m lib.book``: see :mod:`lib.book.cli`. Stage: the book (command line)."""

import sys

from lib.book.cli import main

sys.exit(main())
