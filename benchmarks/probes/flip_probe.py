"""Does a policy flip onto its back? (HalfCheetah's classic failure on replay data)

HalfCheetah never terminates: a cheetah that rolls over keeps going on its back and earns
little. Replay datasets hold such episodes from the behaviour policy's early training. This
evaluates a finished ``ipd run`` or ``ipd baseline`` again (the same episodes and seeds as the
run) with the root angle recorded: an IPD run's distilled policy and its value stage's pi_QOP,
or a baseline's policy; and it counts the dataset's flipped episodes.

A step is *flipped* when ``|root angle| > pi/2`` (observation index 1 in the MuJoCo locomotion
tasks, ``qpos[2]``); an episode is *on its back* when at least ``ON_BACK`` of its steps are.
The table gives per actor the mean score, the episodes on their back, the upright episodes'
mean, and per episode the normalised score and share of flipped steps. For an IPD run it also
says how much of the AWR weight exp(beta c (Q(s,a) - V(s))) (eq. 5, at the value stage's beta
and the paper's 3) lies on the dataset's flipped steps: how strongly advantage weighting turns
imitation away from them.

    python benchmarks/probes/flip_probe.py RUN_DIR [--episodes 10] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ipd_plugins.evaluate import CallableActor, normalized_scores, score
from ipd_plugins.returns import reward_factor
from ipd_plugins.value.losses import awr_weights


class RecordingActor:
    """Wraps an actor and keeps every (B, O) observation batch it is asked to act on."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.observations: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:  # observe(), etc.
        return getattr(self.inner, name)

    def reset(self, obs: torch.Tensor) -> None:
        self.observations = []
        self.inner.reset(obs)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        self.observations.append(np.asarray(obs, dtype=np.float32).copy())
        return self.inner.act(obs)


ON_BACK = 0.1  # an episode spending at least this share of its steps flipped is "on its back"
PAPER_BETA = 3.0  # the AWR inverse temperature of the paper's value stage (eq. 5)


def flipped_steps(angles: np.ndarray) -> np.ndarray:
    """Boolean mask of the steps whose root angle is beyond +-pi/2."""
    return np.abs(angles) > math.pi / 2


def episode_rows(
    result: Any, observations: np.ndarray, angle_index: int, refs: tuple[float, float]
) -> list[dict]:
    """One row per episode. ``observations`` is (T, B, O) for one wave of B episodes."""
    rows = []
    normalised = normalized_scores(np.asarray(result.returns), *refs)
    for b, (ret, length) in enumerate(zip(result.returns, result.lengths, strict=True)):
        flips = flipped_steps(observations[:length, b, angle_index])
        rows.append(
            {
                "return": float(ret),
                "normalised": float(normalised[b]),
                "flipped_share": float(flips.mean()),
                "first_flip": int(np.argmax(flips)) if flips.any() else None,
            }
        )
    return rows


def dataset_summary(ds: Any, angle_index: int) -> dict:
    """How many of the dataset's episodes are on their back, and their mean return against the
    others."""
    steps = flipped_steps(ds.observations[:, angle_index])
    returns = ds.episode_returns()
    flipped_per_episode = np.add.reduceat(steps.astype(np.float64), ds.episode_starts)
    on_back = flipped_per_episode / ds.episode_lengths >= ON_BACK
    return {
        "episodes": len(returns),
        "flipped_episodes": int(on_back.sum()),
        "flipped_step_share": float(steps.mean()),
        "return_flipped": float(returns[on_back].mean()) if on_back.any() else None,
        "return_steady": float(returns[~on_back].mean()) if not on_back.all() else None,
    }


@torch.inference_mode()
def awr_weight_share(
    ds: Any, value: Any, mask: np.ndarray, beta: float, max_weight: float, chunk: int = 8192
) -> float:
    """Share of the clipped AWR weights ``min(exp(beta c (Q(s,a) - V(s))), max_weight)`` over
    the dataset's steps that falls on the ``mask`` steps (c: IQL's reward factor)."""
    factor = reward_factor(ds)
    weights = []
    for i in range(0, ds.n_steps, chunk):
        obs = torch.as_tensor(ds.observations[i : i + chunk], dtype=torch.float32)
        act = torch.as_tensor(ds.actions[i : i + chunk], dtype=torch.float32)
        adv = (value.q(obs, act) - value.v(obs)) * factor
        weights.append(awr_weights(adv, beta, max_weight).double().numpy())
    w = np.concatenate(weights)
    return float(w[mask].sum() / w.sum())


def load_actors(run_dir: Path) -> tuple[Any, Any, dict[str, Any], Any, Any]:
    """Dataset, context, the actors to probe, the value learner and its config (both None for
    a baseline) of an ``ipd run`` or ``ipd baseline`` seed folder: an IPD run's distilled
    policy and pi_QOP, or a baseline's policy."""
    if "baseline" in yaml.safe_load((run_dir / "config.yaml").read_text()):
        from ipd_plugins.baselines import load_trained_baseline

        trained = load_trained_baseline(run_dir)
        name = f"d3rlpy {trained.baseline.config.name}"
        actors = {name: trained.baseline.actor()}
        return trained.dataset, trained.ctx, actors, None, None
    from ipd_plugins.data.runs import load_trained

    run = load_trained(run_dir)
    value, policy = run.components["value"], run.components["policy"]
    actors = {
        f"policy ({run.cfg.components['policy']})": policy.actor(value),
        "pi_QOP": CallableActor(lambda obs: value.act(obs, deterministic=True)),
    }
    return run.dataset, run.ctx, actors, value, run.cfg.configs["value"]


def _number(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="an `ipd run` or `ipd baseline` seed folder")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument(
        "--angle-index", type=int, default=1, help="observation index of the root angle"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="append a Markdown section to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ds, ctx, actors, value, value_cfg = load_actors(Path(args.run_dir))
    if ds.ref_min_score is None or ds.ref_max_score is None:
        raise SystemExit(f"{ds.name} has no reference scores to normalise with")
    refs = (ds.ref_min_score, ds.ref_max_score)
    table = {}
    for name, actor in actors.items():
        rec = RecordingActor(actor)
        result = score(rec, ctx.env_id, args.episodes, ctx.seed, ds)  # the run's episodes
        if len(result.returns) > len(rec.observations[0]):
            raise SystemExit("flip_probe needs every episode in one wave (the evaluator's default)")
        table[name] = episode_rows(result, np.stack(rec.observations), args.angle_index, refs)
    data = dataset_summary(ds, args.angle_index)

    lines = [
        f"\n## {ds.name}, `{args.run_dir}`\n",
        f"Dataset: {data['flipped_episodes']} of {data['episodes']} episodes spend >= "
        f"{ON_BACK:.0%} of their steps on their back "
        f"({100 * data['flipped_step_share']:.1f}% of all steps are flipped); "
        f"mean return of those episodes {_number(data['return_flipped'])}, of the others "
        f"{_number(data['return_steady'])}.\n",
    ]
    beta = getattr(value_cfg, "beta", None)  # an AWR value learner (qov, d3rlpy-iql)
    if value is not None and beta is not None:
        max_weight = getattr(value_cfg, "max_weight", 100.0)
        flipped = flipped_steps(ds.observations[:, args.angle_index])
        shares = [
            f"{100 * awr_weight_share(ds, value, flipped, b, max_weight):.1f}% at beta {b:g}"
            + (" (pi_QOP's)" if b == beta else " (the paper's)")
            for b in sorted({beta, PAPER_BETA})
        ]
        lines[-1] = lines[-1][:-1] + (
            f" AWR weights from this run's Q and V put {' and '.join(shares)} of their mass on "
            f"the {100 * flipped.mean():.1f}% flipped steps.\n"
        )
    lines += [
        f"| actor | normalised, mean | episodes on their back (>= {ON_BACK:.0%} of steps) | "
        "flipped steps | normalised, upright episodes | per episode: normalised (flipped share) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, rows in table.items():
        norm = [r["normalised"] for r in rows]
        upright = [r["normalised"] for r in rows if r["flipped_share"] < ON_BACK]
        per_ep = ", ".join(f"{r['normalised']:.0f} ({r['flipped_share']:.0%})" for r in rows)
        lines.append(
            f"| {name} | {np.mean(norm):.1f} | {len(rows) - len(upright)}/{len(rows)} | "
            f"{100 * np.mean([r['flipped_share'] for r in rows]):.0f}% | "
            f"{_number(np.mean(upright) if upright else None, '.1f')} | {per_ep} |"
        )
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
