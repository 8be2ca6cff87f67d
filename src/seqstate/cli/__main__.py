"""``python -m seqstate.cli``: the same as the ``seqstate`` command."""

from seqstate.cli.dispatch import main

raise SystemExit(main())
