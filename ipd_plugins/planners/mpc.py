"""``mpc`` planner: shooting MPC in the world model scored by the learned value (paper eq. 25).

For each state s_t, N_mpc candidate first actions a_t^(i) are drawn from pi_QOP (the first is
its mean), each is rolled out H_m steps in the world model following pi_QOP's mean, and scored

    G^(i) = sum_{k=0}^{H_m-1} gamma^k R(s_{t+k}^(i), a_{t+k}^(i)) + gamma^{H_m} V(s_{t+H_m}^(i))

with a_t^(i) the candidate and a_{t+k}^(i) = pi_QOP(s_{t+k}^(i)) after it. The paper's eq. 25
writes the sum to k = H_m; we stop at H_m - 1 so V(s_{t+H_m}) is not counted together with a
reward for the same step (the usual n-step return). A rollout that reaches a predicted
termination gets no reward or bootstrap after it. Candidates that leave the reliable set
{U < kappa} (eq. 12) at any step are discarded; if every candidate leaves it, the one that stays
reliable longest is taken (ties by score), and the augmentation's own reliability check then
decides whether the step is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ipd_plugins.returns import discounted_return
from registry import BuildContext, ComponentConfig, PlanningContext, hookimpl

__all__ = ["MPCConfig", "MPCPlanner"]


@dataclass
class MPCConfig(ComponentConfig):
    """Shooting MPC with pi_QOP proposals, world-model rollouts and a V(s) terminal value (eq. 25).

    Args:
        n_mpc: N_mpc, candidate first actions per state.
        horizon: H_m, look-ahead steps per candidate.
        gamma: gamma_mpc, discount of the candidate score.
    """

    kind = "planner"
    name = "mpc"

    n_mpc: int = 3  # N_mpc (table 3); more candidates: better actions, linearly more compute
    horizon: int = 10  # H_m (table 3); longer: more model error, less reliance on V
    gamma: float = 0.99  # gamma_mpc (table 3)

    def __post_init__(self) -> None:
        if self.n_mpc < 1:
            raise ValueError(f"planner.n_mpc must be >= 1, got {self.n_mpc}")
        if self.horizon < 1:
            raise ValueError(f"planner.horizon must be >= 1, got {self.horizon}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"planner.gamma must be in (0, 1], got {self.gamma}")

    def create(self, ctx: BuildContext) -> MPCPlanner:
        return MPCPlanner(self)


class MPCPlanner:
    def __init__(self, config: MPCConfig):
        self.config = config
        self.simulated = 0  # world-model transitions simulated so far (for benchmarks)

    @torch.inference_mode()
    def plan(self, obs: torch.Tensor, ctx: PlanningContext) -> torch.Tensor:
        """(B,O) -> (B,A): the first action of the best reliable candidate, batched over B x N."""
        cfg = self.config
        b, n = obs.shape[0], cfg.n_mpc
        # Candidates: row b*N + i is candidate i of state b; candidate 0 is pi_QOP's mean.
        s = obs.repeat_interleave(n, dim=0)  # (B*N, O)
        first = ctx.value.act(s, deterministic=False).view(b, n, -1)
        first[:, 0] = ctx.value.act(obs, deterministic=True)
        a = first.reshape(b * n, -1)  # (B*N, A)
        rewards, alive = [], [torch.ones(b * n, device=obs.device)]
        reliable_steps = torch.zeros(b * n, device=obs.device)
        still_reliable = torch.ones(b * n, dtype=torch.bool, device=obs.device)
        for k in range(cfg.horizon):
            if k > 0:
                a = ctx.value.act(s, deterministic=True)
            step = ctx.world_model.step(s, a, generator=ctx.generator)
            ok = ctx.reliable(step)  # (B*N,)
            # A terminated rollout cannot leave the reliable set any more.
            ended = alive[-1] == 0
            still_reliable &= ok | ended
            reliable_steps += still_reliable.float()
            rewards.append(step.reward)
            alive.append(alive[-1] * (~step.done).float())
            s = step.next_obs
        self.simulated += b * n * cfg.horizon
        score = discounted_return(
            torch.stack(rewards), torch.stack(alive), ctx.value.v(s), cfg.gamma
        )  # (B*N,)
        # Discard candidates that left the reliable set: keep those with the longest reliable
        # prefix (all H_m steps when any candidate stayed inside), then take the best score.
        reliable_steps, score = reliable_steps.view(b, n), score.view(b, n)
        longest = reliable_steps == reliable_steps.max(dim=1, keepdim=True).values
        best = score.masked_fill(~longest, float("-inf")).argmax(dim=1)
        return first[torch.arange(b, device=obs.device), best]


@hookimpl
def ipd_register_planner() -> list[type[ComponentConfig]]:
    return [MPCConfig]
