"""Stable Diffusion pieces in pure Python + numpy: the CLIP tokenizer (tokenizer.py), prompt weighting and long
prompt windows (prompt.py) and the diffusion schedulers (schedulers.py). The pipeline itself builds on these."""
from .prompt import BREAK, apply_emphasis, parse_weights
from .tokenizer import CLIPTokenizer

__all__ = ["BREAK", "CLIPTokenizer", "apply_emphasis", "parse_weights"]
