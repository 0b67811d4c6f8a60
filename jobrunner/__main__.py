"""`python -m jobrunner`: the same as the `jobrunner` command."""

import sys

from jobrunner.cli.main import main

sys.exit(main())
