"""``python -m clarion.cli``: the ``clarion`` command, as the workers of ``serve`` start it."""

import sys

from clarion.cli import main

if __name__ == "__main__":  # imported (as every module is by the layer tests), it runs nothing
    sys.exit(main())
