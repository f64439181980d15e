"""``python -m daemon``: the same as the ``aiovirtd`` command."""

import sys

from daemon.cli import main

sys.exit(main())
