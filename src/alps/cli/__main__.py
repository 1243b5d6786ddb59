"""``python -m alps.cli``: the ``alps`` command."""

import sys

from alps.cli import main

sys.exit(main())
