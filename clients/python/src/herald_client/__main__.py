"""`python -m herald_client` runs the terminal client (see herald_client.cli)."""

import sys

from .cli import main

sys.exit(main())
