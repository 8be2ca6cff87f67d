"""``python -m seqstate.serve RUN_DIR [options]``."""

import sys

from seqstate.serve.command import main

sys.exit(main())
