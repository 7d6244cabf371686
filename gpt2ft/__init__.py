"""gpt2ft: fine-tune a pretrained causal LM on one book and measure style against copying."""

__version__ = "0.1.0"
