"""``python -m harness.train CONFIG [a=value ...]``."""

import sys

from harness.train.loop import main

sys.exit(main())
