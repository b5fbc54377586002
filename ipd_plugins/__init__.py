"""ipd: Imaginary Planning Distillation for offline RL, as swappable pluggy plugins."""

__version__ = "0.1.0"
