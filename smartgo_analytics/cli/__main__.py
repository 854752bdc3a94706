"""`python -m smartgo_analytics.cli`."""

import sys

from smartgo_analytics.cli import main

sys.exit(main())
