"""``python -m vlaewatch.cli``: the ``vlaewatch`` command."""

import sys

from vlaewatch.cli import main

sys.exit(main())
