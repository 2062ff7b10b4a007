"""``python -m archnet`` (also what ``torchrun -m archnet ...`` runs on every rank)."""

import sys

from archnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
