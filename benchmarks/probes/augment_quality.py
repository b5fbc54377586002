"""Are the imagined segments of a run better than the logged data *in the real environment*?

The augmentation (paper Alg. 1) keeps imagined continuations whose model-predicted return beats
the logged one. This replays them in the true MuJoCo simulator: from each selected state s_t
(the simulator state is rebuilt from the observation, ``qpos = [0, obs[:nq-1]]``, ``qvel =
obs[nq-1:]``; the x position does not enter the dynamics or the reward), it executes

* the imagined actions: their **true** return, against the reward model's prediction;
* the logged actions of the same n steps: their true return (checks that replay from an
  observation reproduces the data: it should equal the logged rewards).

and reports, per segment, true imagined return - logged return over the same steps, the same
with the run's own V bootstrapped at the true end states (``sum gamma^k r_k + gamma^n V(s_n)``,
what the identification of eq. 17-22 compares, but on true states), how often the true
simulator terminates (falls) during the imagined steps, and how far the imagined last state is
from the true one. With ``--continue-steps K`` both branches then continue K steps with the
run's deterministic pi_QOP in the simulator: which end state is better without trusting V.

    python benchmarks/probes/augment_quality.py RUN_DIR [--segments 1000] [--out FILE.md]

``RUN_DIR`` is an ``ipd run`` seed folder (``<out>/<name>/seed_<k>``) on a MuJoCo dataset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ipd_plugins.data.envs import make_env, set_state_from_observation


def replay(env, obs0: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Set the simulator to ``obs0`` and step ``actions``; (rewards, observations, terminated)."""
    set_state_from_observation(env, obs0)
    rewards, observations = [], []
    for a in actions:
        obs, r, terminated, _, _ = env.step(a)
        rewards.append(r)
        observations.append(obs)
        if terminated:
            return np.array(rewards), np.array(observations), True
    return np.array(rewards), np.array(observations), False


def rollout(env, obs: np.ndarray, act, steps: int) -> float:
    """Continue from the simulator's current state with ``act(obs)`` for ``steps``; the return."""
    total = 0.0
    for _ in range(steps):
        obs, r, terminated, _, _ = env.step(act(obs))
        total += float(r)
        if terminated:
            break
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="an `ipd run` seed folder")
    parser.add_argument("--segments", type=int, default=1000, help="segments to replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--continue-steps",
        type=int,
        default=100,
        help="after the segment, both branches continue this many steps with the run's "
        "deterministic pi_QOP in the simulator (a V-free check of the end states; 0: off)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", help="append a Markdown section to this file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from ipd_plugins.data.npz_io import load_npz
    from ipd_plugins.data.runs import load_trained

    run = load_trained(args.run_dir, kinds=("value",))
    cfg, stages, ds = run.cfg, run.stages, run.dataset
    seg_path = Path(stages["augment"]["path"]) / "segments.npz"
    if not seg_path.exists():
        raise SystemExit(f"{args.run_dir}: its augment stage kept no segments ({seg_path})")
    seg = load_npz(seg_path)
    if ds.env_id is None:
        raise SystemExit(f"{cfg.run.dataset} names no environment to replay in")
    value = run.components["value"]
    gamma = float(getattr(cfg.configs["value"], "gamma", 0.99))

    def v(obs: np.ndarray) -> float:
        with torch.inference_mode():
            return float(value.v(torch.as_tensor(obs[None], dtype=torch.float32))[0])

    def pi_qop(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.as_tensor(obs[None], dtype=torch.float32)
            return value.act(x, deterministic=True)[0].numpy()

    def bootstrapped(rewards: np.ndarray, last_obs: np.ndarray, terminated: bool) -> float:
        disc = gamma ** np.arange(len(rewards))
        tail = 0.0 if terminated else gamma ** len(rewards) * v(last_obs)
        return float((disc * rewards).sum() + tail)

    env = make_env(ds.env_id)
    env.reset(seed=args.seed)
    ep_of_step = ds.episode_index
    ep_end = ds.episode_starts + ds.episode_lengths  # one past each episode's last step

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(seg.n_episodes)[: args.segments]
    rows = []
    obs_std = ds.observations.std(0) + 1e-6
    for i in order:
        lo, n_all = int(seg.episode_starts[i]), int(seg.episode_lengths[i])
        imag = seg.extras["imagined"][lo : lo + n_all]
        steps = lo + np.flatnonzero(imag)
        if len(steps) == 0:
            continue
        src = int(seg.extras["source_index"][steps[0]])
        n = min(len(steps), int(ep_end[ep_of_step[src]]) - src)
        steps = steps[:n]
        obs0 = ds.observations[src]
        r_true, o_true, fell = replay(env, obs0, seg.actions[steps])
        cont_true = 0.0 if fell else rollout(env, o_true[-1], pi_qop, args.continue_steps)
        r_logged_replay, o_logged, fell_logged = replay(env, obs0, ds.actions[src : src + n])
        cont_logged = (
            0.0 if fell_logged else rollout(env, o_logged[-1], pi_qop, args.continue_steps)
        )
        k = len(r_true)  # steps until the true simulator terminated (or n)
        logged_terminated = bool(ds.terminations[src : src + n].any())
        rows.append(
            {
                "n": n,
                "true_imagined": float(r_true.sum()),
                "model_imagined": float(seg.rewards[steps].sum()),
                "logged": float(ds.rewards[src : src + n].sum()),
                "logged_replayed": float(r_logged_replay.sum()),
                "true_imagined_continued": float(r_true.sum()) + cont_true,
                "logged_continued": float(r_logged_replay.sum()) + cont_logged,
                "true_imagined_v": bootstrapped(r_true, o_true[-1], fell),
                "logged_v": bootstrapped(
                    ds.rewards[src : src + n], ds.next_observations[src + n - 1], logged_terminated
                ),
                "fell": fell,
                "fell_in_data": logged_terminated,
                "last_state_error": float(
                    np.sqrt(
                        np.mean(
                            ((o_true[k - 1] - seg.next_observations[steps[k - 1]]) / obs_std) ** 2
                        )
                    )
                ),
            }
        )
    env.close()
    if not rows:
        raise SystemExit("no segment with imagined steps")

    def col(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=float)

    gain = col("true_imagined") - col("logged")
    gain_v = col("true_imagined_v") - col("logged_v")
    gain_c = col("true_imagined_continued") - col("logged_continued")
    summary = {
        "run": str(args.run_dir),
        "dataset": cfg.run.dataset,
        "planner": cfg.components["planner"],
        "segments": len(rows),
        "mean_imagined_steps": float(col("n").mean()),
        "logged_return": float(col("logged").mean()),
        "logged_replayed_return": float(col("logged_replayed").mean()),
        "model_imagined_return": float(col("model_imagined").mean()),
        "true_imagined_return": float(col("true_imagined").mean()),
        "true_gain_mean": float(gain.mean()),
        "true_gain_median": float(np.median(gain)),
        "fraction_better": float((gain > 0).mean()),
        "true_gain_with_v_mean": float(gain_v.mean()),
        "true_gain_with_v_median": float(np.median(gain_v)),
        "fraction_better_with_v": float((gain_v > 0).mean()),
        "continue_steps": args.continue_steps,
        "true_gain_continued_mean": float(gain_c.mean()),
        "true_gain_continued_median": float(np.median(gain_c)),
        "true_gain_continued_sem": float(gain_c.std() / np.sqrt(len(gain_c))),
        "fraction_better_continued": float((gain_c > 0).mean()),
        "identification_gap_selected": stages["augment"]["metrics"].get("gap_mean_selected"),
        "fraction_fell": float(col("fell").mean()),
        "fraction_fell_in_data": float(col("fell_in_data").mean()),
        "last_state_error": float(np.median(col("last_state_error"))),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        x = summary
        table = [
            ("logged return (data)", f"{x['logged_return']:.2f}"),
            ("logged actions replayed in the simulator", f"{x['logged_replayed_return']:.2f}"),
            ("imagined return, reward model", f"{x['model_imagined_return']:.2f}"),
            ("imagined actions replayed in the simulator", f"{x['true_imagined_return']:.2f}"),
            (
                "true gain over the logged steps: mean / median",
                f"{x['true_gain_mean']:.2f} / {x['true_gain_median']:.2f}",
            ),
            ("segments better than the logged steps", f"{100 * x['fraction_better']:.0f}%"),
            (
                "true gain, V bootstrapped at the true end state: mean / median",
                f"{x['true_gain_with_v_mean']:.2f} / {x['true_gain_with_v_median']:.2f}",
            ),
            ("... segments better by that measure", f"{100 * x['fraction_better_with_v']:.0f}%"),
            (
                f"true gain, both continued {x['continue_steps']} steps by pi_QOP in the "
                "simulator: mean +- s.e. / median",
                f"{x['true_gain_continued_mean']:.2f} +- {x['true_gain_continued_sem']:.2f} / "
                f"{x['true_gain_continued_median']:.2f}",
            ),
            ("... segments better by that measure", f"{100 * x['fraction_better_continued']:.0f}%"),
            (
                "gap the identification predicted for the selected states (eq. 22, model)",
                f"{x['identification_gap_selected']:.2f}",
            ),
            (
                "segments that fall in the simulator (data, same steps)",
                f"{100 * x['fraction_fell']:.1f}% ({100 * x['fraction_fell_in_data']:.1f}%)",
            ),
            ("last-state error, median RMS in data std", f"{x['last_state_error']:.2f}"),
        ]
        lines = [
            f"\n## {x['dataset']}, planner `{x['planner']}` ({args.run_dir})\n",
            f"{x['segments']} segments replayed, {x['mean_imagined_steps']:.1f} imagined steps "
            "each on average. Returns are sums over those steps.\n",
            "| quantity | value |",
            "|---|---:|",
            *(f"| {label} | {val} |" for label, val in table),
        ]
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
