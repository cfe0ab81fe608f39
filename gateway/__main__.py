"""`python -m gateway` is `voxgate`."""

import sys

from gateway.cli import main

sys.exit(main())
