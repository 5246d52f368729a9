"""longseq: encoder-only transformers with swappable (linear) attention on very long sequences."""

__version__ = "0.1.0"
