"""phases: reproducible measurements of the learning phases of neural networks."""

__version__ = "0.1.0"
