"""``python -m archnet.cli`` (as ``python -m archnet``)."""

import sys

from archnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
