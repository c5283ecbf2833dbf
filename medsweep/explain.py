"""`python -m medsweep.explain`: per-word attributions of a promoted model's predictions (the code is in medsweep/serving/explain.py)."""

import sys

from medsweep.serving.explain import main

if __name__ == "__main__":
    sys.exit(main())
