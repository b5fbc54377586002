"""A third-party ipd plugin: the ``random`` planner (uniform actions inside the bounds).

Install it next to ipd (``pip install -e examples/random_planner``) and it shows up in
``ipd plugins`` and works as ``ipd run --planner random``: ipd finds it through the entry-point
group ``ipd`` declared in this folder's ``pyproject.toml``. Use it as a floor for the planner
ablation: any planner worth having must beat it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from registry import BuildContext, ComponentConfig, PlanningContext, hookimpl

__all__ = ["RandomPlannerConfig", "RandomPlanner"]


@dataclass
class RandomPlannerConfig(ComponentConfig):
    """Uniformly random actions in [act_low, act_high] (a planner ablation floor)."""

    kind = "planner"
    name = "random"

    seed: int = 0  # seed of the planner's own generator

    def create(self, ctx: BuildContext) -> RandomPlanner:
        return RandomPlanner(self, ctx)


class RandomPlanner:
    def __init__(self, config: RandomPlannerConfig, ctx: BuildContext):
        self.low = torch.tensor(ctx.act_low, dtype=torch.float32, device=ctx.device)
        self.high = torch.tensor(ctx.act_high, dtype=torch.float32, device=ctx.device)
        self.generator = torch.Generator(device=ctx.device).manual_seed(config.seed)

    def plan(self, obs: torch.Tensor, ctx: PlanningContext) -> torch.Tensor:
        """(B,O) -> (B,A) uniform actions; ignores the models."""
        u = torch.rand(obs.shape[0], self.low.shape[0], generator=self.generator, device=obs.device)
        return self.low + u * (self.high - self.low)


@hookimpl
def ipd_register_planner() -> list[type[ComponentConfig]]:
    return [RandomPlannerConfig]
