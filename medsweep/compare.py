"""`python -m medsweep.compare runs/a runs/b [...]`: compare promoted models on the same test split
(the code is in medsweep/reporting/compare.py)."""

import sys

from medsweep.reporting.compare import main

if __name__ == "__main__":
    sys.exit(main())
