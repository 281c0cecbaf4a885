"""``python -m e2essl`` is the ``e2essl`` command."""

import sys

from e2essl.cli import main

sys.exit(main())
