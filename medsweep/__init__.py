"""medsweep: hyperparameter sweeps for fine-tuning Hugging Face models on medical text classification."""

__version__ = "0.1.0"
