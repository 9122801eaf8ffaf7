"""``python -m clarion``: the ``clarion`` command, where the venv's scripts are not on PATH."""

import sys

from clarion.cli import main

if __name__ == "__main__":  # imported (as every module is by the layer tests), it runs nothing
    sys.exit(main())
