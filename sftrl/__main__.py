"""``python -m sftrl`` is the ``agent`` command."""

import sys

from sftrl.cli import main

sys.exit(main())
