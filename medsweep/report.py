"""`python -m medsweep.report`: rebuild a run dir's report (the code is in medsweep/reporting/report.py)."""

import sys

from medsweep.reporting.report import main

if __name__ == "__main__":
    sys.exit(main())
