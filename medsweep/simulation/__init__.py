"""A cluster in a box: medsweep's real driver over simulated Ray nodes whose trials replay learning curves.

How the HPO field measures schedulers and drivers without the hardware (Syne Tune's simulator
backend, YAHPO Gym): a trial reports a recorded curve through Tune, sleeping the recorded seconds
times a scale factor. `curves` serves the curves (LCBench's surrogate, or `table`: medsweep's own
recorded trials), `replay` is the trainable, `cluster` the nodes. `clock` needs no Ray at all: it runs
the samplers and schedulers on a simulated clock, to compare search settings at 128 slots in seconds.
"""
