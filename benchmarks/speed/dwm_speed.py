"""DWM-MPC (`--adapter dwm`) speed: milliseconds per environment step of adaptation.

For each adaptable actor at its default-profile size on Hopper-shaped data (O=11, A=3), a
``DWMActor`` adapts B environments at once (M particles x H steps through the ``pe`` world
model at the default profile's size, E SGD steps) and acts; the time of one ``act`` call
divided by B is the cost per environment step. The plain actor's ``act`` is timed alongside.
Weights are untrained (the cost does not depend on their values). The evaluation's wall time is
then estimated for 10 episodes of 1000 steps run in lockstep (B=10): 1000 x (one adapted ``act``
for 10 envs + 10 Hopper-v5 steps, timed here).

    python benchmarks/speed/dwm_speed.py --threads 1 --write

Writes benchmarks/results/dwm_speed.md (with --write). Issue 24's target: milliseconds per
environment step at M=32, H=5, E=1 on 2 cores.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch

from ipd_plugins.baselines.configs import ReBRACBaselineConfig
from ipd_plugins.baselines.trainer import D3rlpyBaseline
from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.profiles import PROFILES
from registry import AdaptationContext, BuildContext, create

O, A = 11, 3
CTX = BuildContext(
    obs_dim=O, act_dim=A, act_low=(-1.0,) * A, act_high=(1.0,) * A, env_id="Hopper-v5"
)


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), "?"
        )
    except OSError:
        model = platform.processor() or "?"
    try:
        bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        bf16 = False
    return f"{model}; avx512_bf16 in /proc/cpuinfo: {'yes' if bf16 else 'no'}"


def _dataset(n: int = 200) -> TrajectoryDataset:
    rng = np.random.default_rng(0)
    episode = dict(
        observations=rng.normal(size=(n + 1, O)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, A)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        terminations=np.zeros(n, bool),
        truncations=np.eye(n, dtype=bool)[-1],
    )
    return TrajectoryDataset.from_episodes(
        [episode], env_id="Hopper-v5", action_low=-np.ones(A), action_high=np.ones(A)
    )


def _actors(profile: dict) -> dict:
    """label -> (make_actor(), q, gamma, dwm options)."""
    value = create(
        "value", "qov", {k: v for k, v in profile["value"].items() if k != "n_steps"}, CTX
    )
    sizes = {k: profile["policy"][k] for k in ("n_layer", "n_embd", "n_head")}
    policy = create("policy", "ipd-dt", sizes, CTX)
    rebrac = D3rlpyBaseline(ReBRACBaselineConfig(hidden=256), CTX, _dataset())
    out = {
        "pi_QOP (qov 2x256)": (value.actor, value.q, value.gamma, {}),
        "rebrac actor (3x256, d3rlpy)": (rebrac.actor, rebrac.q_function(), rebrac.gamma, {}),
        "ipd-dt head, imagined window 5": (
            lambda: policy.actor(value),
            value.q,
            value.gamma,
            {"params": "head", "context": 5},
        ),
        "ipd-dt all, imagined window 20 (K)": (
            lambda: policy.actor(value),
            value.q,
            value.gamma,
            {},
        ),
    }
    return out


def _time_act(actor, B: int, steps: int, warmup: int = 2) -> float:
    """Median seconds of one ``act`` for B envs (obs a slow random walk)."""
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(B, O, generator=gen)
    actor.reset(obs)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        a = actor.act(obs)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        obs = obs + 0.05 * torch.randn(B, O, generator=gen) + 0.01 * a.detach().float().sum()
    return median(times)


def _hopper_step_seconds(n: int = 500) -> float:
    import gymnasium as gym

    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(n):
        _, _, term, trunc, _ = env.step(0.1 * env.action_space.sample())
        if term or trunc:
            env.reset()
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", default="default", help="sizes of the world model and actors")
    p.add_argument("--particles", type=int, default=32, help="M")
    p.add_argument("--horizon", type=int, default=5, help="H")
    p.add_argument("--inner-steps", type=int, default=1, help="E")
    p.add_argument("--envs", default="1,10", help="B values (parallel environments)")
    p.add_argument("--steps", type=int, default=20, help="timed act calls per case")
    p.add_argument("--write", action="store_true", help="write benchmarks/results/dwm_speed.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    wm_sizes = {k: v for k, v in profile["world_model"].items() if k != "n_steps"}
    torch.manual_seed(0)
    wm = create("world_model", "pe", wm_sizes, CTX)
    dwm = {"particles": args.particles, "horizon": args.horizon, "inner_steps": args.inner_steps}
    rows, per_b10 = [], {}
    for label, (make, q, gamma, extra) in _actors(profile).items():
        for B in [int(b) for b in args.envs.split(",")]:
            steps = max(3, args.steps // (4 if "all" in label and B > 1 else 1))
            plain = _time_act(make(), B, steps)
            adapter = create("adapter", "dwm", {**dwm, **extra}, CTX)
            adapted = _time_act(adapter.wrap(make(), AdaptationContext(wm, q, gamma)), B, steps)
            rows.append((label, B, plain * 1e3, adapted * 1e3, adapted * 1e3 / B))
            if B == 10:
                per_b10[label] = adapted
            print(
                f"{label:<36} B={B:<3} plain {plain * 1e3:8.2f} ms  adapted "
                f"{adapted * 1e3:9.2f} ms/call  {adapted * 1e3 / B:8.2f} ms/env-step",
                flush=True,
            )
    env_step = _hopper_step_seconds()
    cmd = "python benchmarks/speed/dwm_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "write"
    )
    lines = [
        "# DWM-MPC adapter (`--adapter dwm`) speed",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {_machine()}; {torch.get_num_threads()} torch thread(s), torch "
        f"{torch.__version__}; other jobs shared the 2 cores.",
        "",
        f"Setting: M={args.particles} particles, H={args.horizon}, E={args.inner_steps}; world "
        f"model `pe` at the {args.profile} profile's size ({wm_sizes}), Hopper-shaped (O=11, "
        "A=3), untrained weights; median over the timed `act` calls (after 2 warm-up calls).",
        "",
        "| actor | B envs | plain act (ms/call) | adapted act (ms/call) | adapted (ms/env-step) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.1f} | {r[4]:.1f} |" for r in rows]
    lines += [
        "",
        f"Hopper-v5 `env.step`: {env_step * 1e3:.3f} ms. Estimated wall time of a 10-episode "
        "evaluation (1000 steps each, B=10 in lockstep) with the adapter:",
        "",
    ]
    for label, sec in per_b10.items():
        total = 1000 * (sec + 10 * env_step)
        lines.append(f"- {label}: {total / 60:.1f} min")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        out = Path(__file__).resolve().parents[1] / "results" / "dwm_speed.md"
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
