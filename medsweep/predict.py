"""`python -m medsweep.predict`: predict a promoted model's labels for a CSV/JSONL file (the code is
in medsweep/serving/predict.py). `from medsweep.predict import load_promoted` loads a promoted
folder in Python (medsweep/serving/inference.py)."""

import sys

from medsweep.serving.inference import load_promoted  # noqa: F401  the README's Python entry point
from medsweep.serving.predict import main

if __name__ == "__main__":
    sys.exit(main())
