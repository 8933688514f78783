"""``python -m stepdown``: the same as the ``stepdown`` command."""

import sys

from .cli.main import main

sys.exit(main())
