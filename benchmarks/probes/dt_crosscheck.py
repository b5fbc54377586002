"""Is the gap between our ``dt`` and d3rlpy's DecisionTransformer in training or in acting?

Both fit the data about equally well (per-dimension action MSE at the end of training, e.g.
hopper-medium 0.062 ours vs 0.061 d3rlpy's) yet d3rlpy's scores higher. This takes one finished
``ipd baseline dt`` run, copies d3rlpy's trained weights into our ``DecisionModel`` (the two
architectures map layer for layer), checks that both networks then predict the same actions on
the dataset's windows, and evaluates the copy through our own acting loop (``SequenceActor`` +
return-to-go bookkeeping) next to d3rlpy's ``StatefulTransformerWrapper``, same episodes:

* same score: our acting loop is right and the gap is in how our policy is trained;
* different scores: one of the acting paths is wrong. (The first run found the evaluator
  handing d3rlpy's wrapper views of a buffer it overwrote; see ``default_hopper.md``.)

    python benchmarks/probes/dt_crosscheck.py RUN_DIR [--episodes 10] [--out FILE.md]

``RUN_DIR`` is an ``ipd baseline dt`` seed folder (its ``stages.json`` names the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ipd_plugins.data.envs import make_env
from ipd_plugins.evaluate import EVAL_SEED, score


def port_weights(d3: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Copy d3rlpy's ``ContinuousDecisionTransformer`` ``d3`` into our ``DecisionModel``.

    d3rlpy counts time from 1 (0 is padding), we count from 0: our row t is d3rlpy's row t+1.
    d3rlpy's block and final LayerNorms use eps 0.003; ours are set to match. d3rlpy feeds actions
    scaled to [-1, 1], ours raw, so the action embedding absorbs the scaling.
    """
    with torch.no_grad():
        enc = [m for m in d3._encoder.modules() if isinstance(m, torch.nn.Linear)]
        assert len(enc) == 1, f"expected a one-layer state encoder, got {len(enc)} layers"
        ours.embed_obs.load_state_dict(enc[0].state_dict())
        # d3rlpy embeds actions min-max scaled to [-1, 1], ours raw: fold the scaling in
        w, b = d3._action_embed.weight, d3._action_embed.bias
        ours.embed_act.weight.copy_(w / ours.act_half)
        ours.embed_act.bias.copy_(b - w @ (ours.act_mid / ours.act_half))
        ours.embed_cond.load_state_dict(d3._rtg_embed.state_dict())
        table = d3._position_encoding._embed.weight  # (max_timestep + 1, C), row 0 = padding
        n = ours.embed_pos.num_embeddings
        assert table.shape[0] >= n + 1, f"d3rlpy's table has {table.shape[0]} rows, need {n + 1}"
        ours.embed_pos.weight.copy_(table[1 : n + 1])
        ours.embed_ln.load_state_dict(d3._embed_ln.state_dict())
        blocks = list(d3._gpt2._transformer)
        assert len(blocks) == len(ours.transformer.blocks)
        for theirs, mine in zip(blocks, ours.transformer.blocks, strict=True):
            att = theirs._attention
            mine.attn.c_attn.weight.copy_(torch.cat([att._q.weight, att._k.weight, att._v.weight]))
            mine.attn.c_attn.bias.copy_(torch.cat([att._q.bias, att._k.bias, att._v.bias]))
            mine.attn.c_proj.load_state_dict(att._proj.state_dict())
            mine.ln_1.load_state_dict(theirs._layer_norm1.state_dict())
            mine.ln_2.load_state_dict(theirs._layer_norm2.state_dict())
            mine.ln_1.eps = mine.ln_2.eps = theirs._layer_norm1.eps
            mine.mlp[0].load_state_dict(theirs._mlp._l1.state_dict())
            mine.mlp[2].load_state_dict(theirs._mlp._l2.state_dict())
        ours.transformer.ln_f.load_state_dict(d3._gpt2._layer_norm.state_dict())
        ours.transformer.ln_f.eps = d3._gpt2._layer_norm.eps
        ours.head.load_state_dict(d3._output.state_dict())


def lockstep(actors: list, env_id: str, seed: int) -> tuple[float, int]:
    """One episode driven by ``actors[0]``, every actor fed the same observations and rewards.

    Returns the largest difference between the actors' actions over the episode and its length:
    if it stays at float precision the acting loops are the same function of the history.
    """
    env = make_env(env_id)
    obs, _ = env.reset(seed=seed)
    obs = torch.as_tensor(np.asarray(obs, np.float32))[None]
    for actor in actors:
        actor.reset(obs)
    worst, steps, done = 0.0, 0, False
    while not done:
        actions = [actor.act(obs) for actor in actors]
        worst = max(worst, *(float((a - actions[0]).abs().max()) for a in actions))
        obs, reward, terminated, truncated, _ = env.step(actions[0][0].numpy())
        obs = torch.as_tensor(np.asarray(obs, np.float32))[None]
        for actor in actors:
            actor.observe(torch.tensor([reward], dtype=torch.float32))
        steps, done = steps + 1, terminated or truncated
    env.close()
    return worst, steps


def load_pair(run_dir: Path) -> SimpleNamespace:
    """The finished d3rlpy DT of ``run_dir`` and our ``dt`` policy holding a copy of it."""
    from ipd_plugins.baselines import load_trained_baseline

    trained = load_trained_baseline(run_dir)
    if trained.baseline.config.name != "dt":
        raise SystemExit(f"{run_dir} is a '{trained.baseline.config.name}' baseline, not 'dt'")
    return pair_around(trained.baseline, trained.settings, trained.dataset, trained.ctx)


def make_pair(cfg: Any, bconf: Any, weights: Path | None = None) -> SimpleNamespace:
    """d3rlpy's DT for run config ``cfg`` and DT baseline config ``bconf`` (its fresh, seeded
    init, or ``weights``), and our ``dt`` policy holding a copy of it with d3rlpy's scalings."""
    from ipd_plugins.baselines import D3rlpyBaseline
    from ipd_plugins.pipeline import prepare_run

    p = prepare_run(cfg.run, echo=lambda m: None)
    baseline = D3rlpyBaseline(bconf, p.ctx, p.dataset)
    if weights is not None:
        baseline.load(weights)
    return pair_around(baseline, cfg.run, p.dataset, p.ctx)


def pair_around(baseline: Any, settings: Any, ds: Any, ctx: Any) -> SimpleNamespace:
    """Our ``dt`` policy holding a copy of d3rlpy's DT ``baseline``, with d3rlpy's scalings
    (``settings``: the run's :class:`~ipd_plugins.run_config.RunSettings`)."""
    from registry import manager

    bconf = baseline.config
    # the network's sizes and the optimiser's settings (which dt_train_lockstep.py needs)
    shared = ("context", "n_layer", "n_embd", "n_head", "dropout", "max_timestep", "batch_size")
    shared += ("learning_rate", "weight_decay", "grad_clip", "warmup_steps", "n_steps")
    policy = manager.create(
        "policy",
        "dt",
        {
            **{k: getattr(bconf, k) for k in shared},
            "target_return": float(baseline.target_return),
            "rtg_scale": 1.0 / baseline.reward_multiplier,
            "position": "timestep",
        },
        dataclasses.replace(ctx, precision="fp32"),  # d3rlpy's DT computes in fp32
    )
    net = policy.net.eval()
    copy_scalings(baseline, net)
    port_weights(baseline.modules.transformer, net.model)
    return SimpleNamespace(
        baseline=baseline,
        policy=policy,
        settings=settings,
        ds=ds,
        ctx=ctx,
        context=bconf.context,
    )


def copy_scalings(baseline: Any, net: torch.nn.Module) -> None:
    """Give our ``PolicyNet`` d3rlpy's observation standardisation and return-to-go scale."""
    with torch.no_grad():
        net.obs_norm.mean.copy_(torch.as_tensor(baseline.obs_mean))
        # d3rlpy's StandardObservationScaler divides by std + eps
        eps = baseline.algo.config.observation_scaler.eps
        net.obs_norm.std.copy_(torch.as_tensor(baseline.obs_std) + eps)
        net.cond_shift.fill_(0.0)
        net.cond_scale.fill_(1.0 / baseline.reward_multiplier)


def teacher_forced_difference(pair: SimpleNamespace, n_windows: int = 256) -> tuple[float, int]:
    """Largest action difference of the two networks on dataset windows, and the steps compared."""
    from ipd_plugins.policies.sequence_data import SequenceSampler, returns_to_go

    ds, ctx, net, d3 = pair.ds, pair.ctx, pair.policy.net, pair.baseline.modules.transformer
    scale = pair.baseline.reward_multiplier
    rtg = returns_to_go(ds.rewards, ds.episode_lengths) * scale
    sampler = SequenceSampler(ds, rtg, pair.context, generator=torch.Generator().manual_seed(0))
    batch = sampler.sample(n_windows)
    m = batch["mask"]
    with torch.no_grad():
        mine = net(batch["obs"], batch["act"], batch["cond"], m, batch["timestep"])
        mean, std = net.obs_norm.mean, net.obs_norm.std  # = d3rlpy's scaler
        lo, hi = torch.as_tensor(ctx.act_low), torch.as_tensor(ctx.act_high)
        d3.train()  # keep the last action token (eval mode drops it; causality makes it moot)
        p = {mod: mod.p for mod in d3.modules() if isinstance(mod, torch.nn.Dropout)}
        for mod in p:
            mod.p = 0.0
        theirs = d3(
            ((batch["obs"] - mean) / std) * m[..., None],
            (2 * (batch["act"] - lo) / (hi - lo) - 1) * m[..., None],
            batch["cond"][..., None],
            (batch["timestep"] + 1) * m,
            1.0 - m.float(),
        )
        for mod, rate in p.items():
            mod.p = rate
        d3.eval()
        theirs = lo + (theirs + 1) * (hi - lo) / 2
    return float((mine - theirs).abs()[m].max()), int(m.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="an `ipd baseline dt` seed folder")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="append a Markdown section to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run_dir = Path(args.run_dir)
    pair = load_pair(run_dir)
    diff, n_steps = teacher_forced_difference(pair)
    print(f"max |action difference| on {n_steps} valid window steps: {diff:.2e}")
    if diff > 1e-3:
        raise SystemExit("the copied network does not reproduce d3rlpy's predictions")
    baseline, policy, ctx = pair.baseline, pair.policy, pair.ctx
    seed = EVAL_SEED + ctx.seed  # the first of the run's evaluation episodes
    worst, steps = lockstep([baseline.actor(), policy.actor(None)], ctx.env_id, seed)
    print(f"lockstep episode of {steps} steps: max |action difference| {worst:.2e}")

    n = args.episodes
    actors = {
        "d3rlpy's StatefulTransformerWrapper": baseline.actor(),
        "the same weights in our SequenceActor": policy.actor(None),
    }
    rows = {name: score(a, ctx.env_id, n, ctx.seed, pair.ds) for name, a in actors.items()}
    for name, res in rows.items():
        r = res.to_dict()
        print(f"{name:>40}: {r['normalized_mean']:.1f} +- {r['normalized_std']:.1f}")
    if args.out:
        lines = [
            f"\n## {pair.settings.dataset} seed {pair.settings.seed}, `{run_dir}`\n",
            f"Copied network vs d3rlpy's on {n_steps} window steps: max |action difference| "
            f"{diff:.1e}. Both acting loops fed the same {steps}-step episode: max |action "
            f"difference| {worst:.1e}. {n} episodes per row, the run's evaluation seeds.\n",
            "| acting loop | normalised |",
            "|---|---:|",
        ]
        for name, res in rows.items():
            r = res.to_dict()
            lines.append(f"| {name} | {r['normalized_mean']:.1f} +- {r['normalized_std']:.1f} |")
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
