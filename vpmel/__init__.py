"""vpmel: Visual-Prompt-guided Multimodal Entity Linking (VP-MEL) as a reproducible pipeline."""

__version__ = "0.1.0"
