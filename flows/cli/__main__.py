"""``python -m flows.cli``: the ``imgflow`` command."""

import sys

from flows.cli import entry

sys.exit(entry())
