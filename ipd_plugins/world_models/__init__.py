"""World models (paper sec. 3.2): ``pe``, the probabilistic ensemble with a reward model."""

from ipd_plugins.world_models.termination import known_termination_rule

__all__ = ["known_termination_rule"]
