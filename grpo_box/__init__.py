"""GRPO Box: GRPO reinforcement learning on one GPU (or the CPU), from data to a GGUF file.

The engine (this package, minus `ui/`) never imports gradio; the CLI (`python -m grpo_box`) and the
app call the same functions.
"""

__version__ = "0.1.0"
