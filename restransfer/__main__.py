"""``python -m restransfer COMMAND ...``: the ``restransfer`` command where its script is not on the PATH."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
