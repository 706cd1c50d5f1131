"""``python -m switchyard.targets.gateway``: the gateway's command line (see L{tool})."""

import sys

from switchyard.targets.gateway.tool import main

sys.exit(main())
