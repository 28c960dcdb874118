"""`python -m npusim.cli`."""

import sys

from npusim.cli.app import main

sys.exit(main())
