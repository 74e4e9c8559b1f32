"""``python3 -m bpfcompat.validator``: the same command line as ``python3 validator.py``."""

import sys

from bpfcompat.validator.validator import main

sys.exit(main())
