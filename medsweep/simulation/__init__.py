"""A cluster in a box: medsweep's real driver over simulated Ray nodes whose trials replay learning curves.

How the HPO field measures schedulers and drivers without the hardware (Syne Tune's simulator
backend, YAHPO Gym): a trial reports a recorded curve through Tune, sleeping the recorded seconds
times a scale factor. `curves` holds the curves, `replay` the trainable, `cluster` the nodes.
"""
