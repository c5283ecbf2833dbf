"""`python -m medsweep.serve`: serve a promoted model over HTTP (the code is in medsweep/serving/serve.py)."""

import sys

from medsweep.serving.serve import main

if __name__ == "__main__":
    sys.exit(main())
