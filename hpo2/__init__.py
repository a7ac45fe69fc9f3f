"""hpo2: find the best second-order optimizer, and its settings, for a training job."""

__version__ = "0.1.0"
