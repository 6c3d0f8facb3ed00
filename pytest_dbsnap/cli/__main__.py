"""`python -m pytest_dbsnap.cli`: the dbsnap command without its console script."""

import sys

from pytest_dbsnap.cli import main

sys.exit(main())
