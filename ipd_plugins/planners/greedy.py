"""``greedy`` planner: the quasi-optimal policy's own action (the paper's fig. 2 ablation).

Augmenting with ``greedy`` is "vanilla greedy Q-learning" data generation in the paper's words:
the action is pi_QOP(s) (eq. 5-6), with no look-ahead in the world model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from registry import BuildContext, ComponentConfig, PlanningContext, hookimpl

__all__ = ["GreedyConfig", "GreedyPlanner"]


@dataclass
class GreedyConfig(ComponentConfig):
    """The quasi-optimal policy's action, no planning (ablation baseline for ``mpc``).

    Args:
        deterministic: take pi_QOP's mean (True) or a sample from it (False).
    """

    kind = "planner"
    name = "greedy"

    deterministic: bool = True  # mean action of pi_QOP; False samples (more diverse, noisier data)

    def create(self, ctx: BuildContext) -> GreedyPlanner:
        return GreedyPlanner(self)


class GreedyPlanner:
    def __init__(self, config: GreedyConfig):
        self.config = config

    @torch.inference_mode()
    def plan(self, obs: torch.Tensor, ctx: PlanningContext) -> torch.Tensor:
        """(B,O) -> (B,A) = pi_QOP(s)."""
        return ctx.value.act(obs, deterministic=self.config.deterministic)


@hookimpl
def ipd_register_planner() -> list[type[ComponentConfig]]:
    return [GreedyConfig]
