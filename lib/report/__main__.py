"""``python -m lib.report``: re-render the README's results blocks (:mod:`lib.report.readme`).
Stage: report (command line)."""

import sys

from lib.report.readme import main

sys.exit(main(argv=sys.argv[1:]))
