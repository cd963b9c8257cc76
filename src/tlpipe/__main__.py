"""python -m tlpipe: the same as the `tlpipe` command."""

import sys

from tlpipe.cli import main

sys.exit(main())
