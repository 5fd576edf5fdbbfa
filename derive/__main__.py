"""`python -m derive`: the same as the `derive` command."""

import sys

from derive.cli import main

sys.exit(main())
