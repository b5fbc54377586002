"""Do our ``dt`` and d3rlpy's DecisionTransformer take the same gradient steps?

``dt_crosscheck.py`` showed the two *act* alike, so the score gap between them is in training.
This starts both from one initialisation (d3rlpy's seeded init, copied into our
``DecisionModel``), feeds both the same minibatches of windows, and after each step measures
how far apart their predicted actions have drifted on a fixed probe batch. Dropout is off in
both so that the only differences left are in the update rule. Our side runs in variants:

* ``ours``: our ``dt`` as it trains (``policy.loss``: squared error averaged over the valid
  steps and action dimensions; AdamW decays every weight);
* ``+ d3rlpy loss``: d3rlpy's loss instead, squared error *summed* over action dimensions (in
  its [-1, 1] action scaling) and averaged over all B x K slots, padding included;
* ``+ d3rlpy decay``: that loss and d3rlpy's GPT AdamW groups (no decay on biases, LayerNorm
  and embedding weights).

If a variant tracks d3rlpy to float precision, the differences it adds are all there is
between the two update rules. The share of steps whose gradient norm hit the 0.25 clip is
reported for each side: a loss scaled by a constant changes nothing under Adam unless the clip
acts.

``--from-init`` instead trains our ``dt`` its own way (its own sampler and random stream, the
baseline's dropout) for the baseline's ``n_steps`` from d3rlpy's seeded initialisation, and
scores it: next to ``ipd baseline dt`` of the same seed (the same init, d3rlpy's own batches)
it tells whether the initialisation's distribution is what separates the two recipes.
Resumable: checkpoints go to ``--work-dir``.

    python benchmarks/probes/dt_train_lockstep.py --dataset hopper-medium [--steps 300] \\
        [--out FILE.md]
    python benchmarks/probes/dt_train_lockstep.py --dataset hopper-medium --from-init \\
        [--out FILE.md]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

_spec = importlib.util.spec_from_file_location(
    "dt_crosscheck", Path(__file__).resolve().parent / "dt_crosscheck.py"
)
dt_crosscheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dt_crosscheck)

VARIANTS = ("ours", "+ d3rlpy loss", "+ d3rlpy decay")
REPORT_AT = (1, 10, 30, 100, 300, 1000, 3000)


class _FixedSampler:
    """Hands ``train_step`` the batch the caller put in ``batch``."""

    batch: dict[str, torch.Tensor] | None = None

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        assert self.batch is not None and self.batch["obs"].shape[0] == n
        return self.batch


class _ClipRecorder:
    """Wraps ``torch.nn.utils.clip_grad_norm_`` (which both trainers call) to log each norm."""

    def __init__(self, max_norm: float):
        self.max_norm, self.norms, self.side = max_norm, {}, None
        self._orig = nn.utils.clip_grad_norm_

    def __call__(self, params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        norm = self._orig(params, max_norm, *args, **kwargs)
        self.norms.setdefault(self.side, []).append(float(norm))
        return norm

    def clipped_share(self, side: str) -> float:
        norms = self.norms.get(side, [])
        return sum(n > self.max_norm for n in norms) / max(1, len(norms))


def d3rlpy_loss(policy: Any) -> Any:
    """``policy.loss`` replaced by d3rlpy's ``DecisionTransformerImpl.compute_loss``."""
    half = policy.net.model.act_half

    def loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], value: Any) -> Any:
        per_slot = (((pred - batch["act"]) / half) ** 2).sum(-1)  # (B, T), in [-1, 1] units
        value = (per_slot * batch["mask"].to(per_slot.dtype)).mean()
        return value, {"loss": value.item()}

    return loss


def gpt_adamw(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """d3rlpy's ``GPTAdamWFactory`` groups: decay linear weights only."""
    decay, no_decay = [], []
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            is_linear_weight = name == "weight" and isinstance(module, nn.Linear)
            (decay if is_linear_weight else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr)


def d3rlpy_batch(pair: Any, batch: dict[str, torch.Tensor]) -> Any:
    """Our window batch in d3rlpy's scalings, as its ``TorchTrajectoryMiniBatch``."""
    from d3rlpy.torch_utility import TorchTrajectoryMiniBatch

    net, ctx, m = pair.policy.net, pair.ctx, batch["mask"]
    lo, hi = torch.as_tensor(ctx.act_low), torch.as_tensor(ctx.act_high)
    mf = m.float()
    return TorchTrajectoryMiniBatch(
        observations=((batch["obs"] - net.obs_norm.mean) / net.obs_norm.std) * mf[..., None],
        actions=(2 * (batch["act"] - lo) / (hi - lo) - 1) * mf[..., None],
        rewards=torch.zeros_like(batch["cond"])[..., None],
        returns_to_go=batch["cond"][..., None],
        terminals=torch.zeros_like(batch["cond"])[..., None],
        timesteps=((batch["timestep"] + 1) * m).long(),
        masks=mf,
        device="cpu:0",
    )


def run_variant(
    cfg: Any,
    bconf: Any,
    variant: str,
    steps: int,
    recorder: _ClipRecorder,
    train_action_embedding: bool = True,
) -> list[tuple[int, float]]:
    """Train both sides ``steps`` steps on shared batches; (step, max |action difference|).

    Our model embeds raw actions where d3rlpy embeds them scaled to [-1, 1]: the same function
    (``port_weights`` folds the scaling in) but another parametrisation of it wherever the
    action bounds are not [-1, 1] (pendulum's are [-2, 2]; the MuJoCo tasks' are [-1, 1]), so
    the two take different steps there. ``train_action_embedding=False`` freezes that layer on
    both sides, which leaves only the rest of the update rule to compare.
    """
    from ipd_plugins.policies.sequence_data import SequenceSampler, returns_to_go

    pair = dt_crosscheck.make_pair(cfg, bconf)
    policy, baseline = pair.policy, pair.baseline
    if not train_action_embedding:
        for p in (
            *policy.net.model.embed_act.parameters(),
            *baseline.modules.transformer._action_embed.parameters(),
        ):
            p.requires_grad_(False)
    state = policy.start_training(pair.ds, None)  # refits the scalings: put d3rlpy's back
    dt_crosscheck.copy_scalings(baseline, policy.net)
    if variant != "ours":
        policy.loss = d3rlpy_loss(policy)
    if variant == "+ d3rlpy decay":
        state.opt = gpt_adamw(policy.net, policy.cfg.learning_rate, policy.cfg.weight_decay)
        # the same warm-up, now driving the new optimiser
        state.sched = torch.optim.lr_scheduler.LambdaLR(state.opt, state.sched.lr_lambdas[0])
    fixed = _FixedSampler()
    state.sampler = fixed
    rtg = returns_to_go(pair.ds.rewards, pair.ds.episode_lengths) * baseline.reward_multiplier
    source = SequenceSampler(
        pair.ds, rtg, pair.context, generator=torch.Generator().manual_seed(cfg.run.seed + 1)
    )
    d3 = baseline.modules.transformer
    d3.train()
    out = []
    for step in range(1, steps + 1):
        fixed.batch = source.sample(policy.cfg.batch_size)
        recorder.side = f"ours {variant}"
        policy.train_step(state, None)
        recorder.side = f"d3rlpy {variant}"
        baseline.impl.inner_update(d3rlpy_batch(pair, fixed.batch), step)
        if step in REPORT_AT or step == steps:
            diff, _ = dt_crosscheck.teacher_forced_difference(pair)
            d3.train()  # teacher_forced_difference leaves it in eval mode
            out.append((step, diff))
            print(f"[{variant}] step {step}: max |action difference| {diff:.2e}", flush=True)
    return out


def train_from_d3rlpy_init(cfg: Any, bconf: Any, work_dir: Path, episodes: int) -> Any:
    """Our ``dt`` trained for ``bconf.n_steps`` from d3rlpy's seeded init; its evaluation."""
    from ipd_plugins.evaluate import score

    pair = dt_crosscheck.make_pair(cfg, bconf)
    pair.policy.fit(pair.ds, None, work_dir=work_dir)
    return score(pair.policy.actor(None), pair.ctx.env_id, episodes, pair.ctx.seed, pair.ds)


def _report(text: str, out: str | None) -> None:
    """Print ``text`` and append it to the Markdown file ``out`` (if given)."""
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text)


def main() -> None:
    from ipd_plugins.baselines import resolve_baseline
    from ipd_plugins.run_config import resolve_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="hopper-medium")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--from-init", action="store_true", help="see the module docstring")
    parser.add_argument("--work-dir", default="benchmarks/work/dt_from_d3rlpy_init")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="append a Markdown section to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    cfg = resolve_config(run={"dataset": args.dataset, "seed": args.seed, "profile": args.profile})
    if args.from_init:
        bconf = resolve_baseline("dt", args.profile)
        work_dir = Path(args.work_dir) / f"{args.dataset}_{args.profile}_seed{args.seed}"
        res = train_from_d3rlpy_init(cfg, bconf, work_dir, args.episodes).to_dict()
        text = (
            f"\n## Our `dt` from d3rlpy's init: {args.dataset}, profile `{args.profile}`, seed "
            f"{args.seed}\n\n`python benchmarks/probes/dt_train_lockstep.py "
            f"--dataset {args.dataset} "
            f"--profile {args.profile} --seed {args.seed} --from-init`: {bconf.n_steps} steps, "
            f"{args.episodes} episodes: **{res['normalized_mean']:.1f} +- "
            f"{res['normalized_std']:.1f}** normalised.\n"
        )
        _report(text, args.out)
        return
    bconf = resolve_baseline("dt", args.profile, {"dropout": 0.0}, None)
    recorder = _ClipRecorder(bconf.grad_clip)
    nn.utils.clip_grad_norm_ = recorder
    try:
        rows = {v: run_variant(cfg, bconf, v, args.steps, recorder) for v in variants}
    finally:
        nn.utils.clip_grad_norm_ = recorder._orig
    shares = {
        v: (recorder.clipped_share(f"ours {v}"), recorder.clipped_share(f"d3rlpy {v}"))
        for v in variants
    }
    steps = [s for s, _ in rows[variants[0]]]
    lines = [
        f"\n## {args.dataset}, profile `{args.profile}` sizes, seed {args.seed}, "
        f"{args.steps} steps, dropout 0\n",
        "Max |action difference| between our network and d3rlpy's on 256 dataset windows "
        "after each number of shared-batch steps, and the share of steps whose gradient norm "
        f"was clipped at {bconf.grad_clip} (ours / d3rlpy's).\n",
        "| our side | " + " | ".join(f"step {s}" for s in steps) + " | clipped (ours / d3rlpy) |",
        "|---|" + "---:|" * (len(steps) + 1),
    ]
    for v in variants:
        cells = " | ".join(f"{d:.1e}" for _, d in rows[v])
        ours, theirs = shares[v]
        lines.append(f"| {v} | {cells} | {ours:.0%} / {theirs:.0%} |")
    _report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
