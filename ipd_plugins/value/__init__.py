"""Value learners (paper sec. 3.1): ``qov`` (the paper's Huber-expectile IQL) and ``d3rlpy-iql``."""

__all__: list[str] = []
