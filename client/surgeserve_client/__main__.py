"""`python -m surgeserve_client ...`: the `ssc` command."""

import sys

from surgeserve_client.cli import main

sys.exit(main())
