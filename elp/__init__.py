"""elp: parameter-efficient fine-tuning of self-supervised speech backbones."""

__version__ = "0.1.0"
