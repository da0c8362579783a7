"""``python -m blockd``: the same as the ``blockd`` console script."""

import sys

from blockd.cli import main

sys.exit(main())
