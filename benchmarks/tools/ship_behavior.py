"""Choose the medium snapshot of a SAC run and ship it (and the replay snapshots) in the package.

Reads ``WORK/<task>/snapshots.jsonl`` written by ``benchmarks/tools/train_behavior.py``,
re-evaluates the snapshots whose quick evaluation falls in the D4RL "medium" band (from the
float16 copy that will ship, 30 stochastic episodes), keeps the one nearest the band's centre,
and writes

    ipd_plugins/assets/behavior/<task>/index.json
    ipd_plugins/assets/behavior/<task>/step_XXXXXXX.safetensors   (float16 actors)

``index.json`` names the medium snapshot and the replay mixture: the uniform warm-up, then at most
``--max-replay`` snapshots up to medium, each weighted by the training steps it stands for (a
snapshot stands for the steps since the previous shipped one).

    python benchmarks/tools/ship_behavior.py --work /work/behavior_runs hopper
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import ipd_plugins
from ipd_plugins.data.behavior import evaluate_actor, load_snapshot, save_snapshot
from ipd_plugins.data.envs import ref_scores

ASSETS = Path(ipd_plugins.__file__).resolve().parent / "assets" / "behavior"  # in the package
BANDS = {"hopper": (40.0, 55.0), "halfcheetah": (35.0, 45.0), "walker2d": (55.0, 75.0)}
ENV_IDS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}


def normalised(env_id: str, ret: float) -> float:
    lo, hi = ref_scores(env_id)
    return 100.0 * (ret - lo) / (hi - lo)


def choose_medium(task: str, run: Path, rows: list[dict], n_eval: int, n_cand: int) -> dict:
    env_id = ENV_IDS[task]
    lo, hi = BANDS[task]
    centre = 0.5 * (lo + hi)
    scored = [(abs(normalised(env_id, r["eval_return_stoch"]) - centre), r) for r in rows]
    cands = [r for d, r in sorted(scored, key=lambda x: x[0]) if d <= (hi - lo)][:n_cand]
    if not cands:
        best = max(rows, key=lambda r: r["eval_return_stoch"])
        raise SystemExit(
            f"{task}: no snapshot near the medium band {lo}-{hi} yet; best so far step "
            f"{best['step']} stochastic return {best['eval_return_stoch']:.1f} "
            f"({normalised(env_id, best['eval_return_stoch']):.1f} normalised)"
        )
    best_row, best_d = None, np.inf
    for r in cands:
        actor, _ = load_snapshot(run / r["file"])
        with tempfile.TemporaryDirectory() as tmp:  # evaluate the float16 copy that will ship
            save_snapshot(Path(tmp) / "a.safetensors", actor, {}, dtype=torch.float16)
            actor16, _ = load_snapshot(Path(tmp) / "a.safetensors")
        rets = evaluate_actor(env_id, actor16, n_eval, deterministic=False, seed=12345)
        score = normalised(env_id, float(rets.mean()))
        print(f"{task}: step {r['step']}: {rets.mean():.1f} +- {rets.std():.1f} ({score:.1f})")
        r["ship_eval_return"], r["ship_eval_normalised"] = float(rets.mean()), score
        d = abs(score - centre)
        if lo <= score <= hi and d < best_d:
            best_row, best_d = r, d
    if best_row is None:
        raise SystemExit(f"{task}: none of the candidates scored inside {lo}-{hi} on re-evaluation")
    return best_row


def replay_mixture(rows: list[dict], medium_step: int, max_snaps: int) -> list[dict]:
    """[{file, steps}] : the uniform warm-up, then snapshots up to medium with their step spans."""
    start = int(rows[0]["start_steps"])
    trained = [r for r in rows if start < r["step"] <= medium_step]
    pick = np.unique(np.linspace(0, len(trained) - 1, min(max_snaps, len(trained))).round())
    out = [{"file": "uniform", "steps": start}]
    prev = start
    for i in pick.astype(int):
        r = trained[i]
        out.append(
            {"file": Path(r["file"]).name, "steps": int(r["step"] - prev), "step": r["step"]}
        )
        prev = r["step"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tasks", nargs="+", choices=list(BANDS))
    parser.add_argument("--work", default="/work/behavior_runs")
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-replay", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for task in args.tasks:
        run = Path(args.work) / task
        rows = [json.loads(x) for x in (run / "snapshots.jsonl").read_text().splitlines() if x]
        medium = choose_medium(task, run, rows, args.eval_episodes, args.candidates)
        replay = replay_mixture(rows, medium["step"], args.max_replay)
        out = ASSETS / task
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.safetensors"):
            old.unlink()
        files = {Path(medium["file"]).name} | {r["file"] for r in replay if r["file"] != "uniform"}
        by_name = {Path(r["file"]).name: r for r in rows}
        for name in sorted(files):
            actor, meta = load_snapshot(run / "snapshots" / name)
            save_snapshot(out / name, actor, by_name[name], dtype=torch.float16)
        index = {
            "env_id": ENV_IDS[task],
            "medium": Path(medium["file"]).name,
            "medium_step": medium["step"],
            "medium_eval_return": medium["ship_eval_return"],
            "medium_eval_normalised": medium["ship_eval_normalised"],
            "band": BANDS[task],
            "replay": replay,
            "trained_by": f"python benchmarks/tools/train_behavior.py --work {args.work} {task}",
        }
        (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        size = sum(f.stat().st_size for f in out.iterdir())
        print(
            f"{task}: shipped medium step {medium['step']} and {len(files)} snapshots "
            f"({size / 1e6:.2f} MB) to {out}"
        )


if __name__ == "__main__":
    main()
