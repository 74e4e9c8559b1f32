"""``python3 -m bpfcompat.validator --artifact X --out Y``: validate one object."""

import sys

from .run import main

sys.exit(main())
