"""``python -m xlt.report DIR...`` = ``xlt-report DIR...``."""

import sys

from xlt.report import main

sys.exit(main())
