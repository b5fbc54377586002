"""Write the queue of what score table v2 still lacks, for ``benchmarks/tools/lanes.sh``.

Reads the spec (``benchmarks/experiments/table_v2.yaml``), its record
(``benchmarks/results/table_v2_runs``) and the `dwm` rows (``table_v2_dwm.jsonl``) of this
checkout, and prints one shell line per job, each an ``ipd sweep --serial`` slice run from a
pinned checkout (``--worktree``, so that editing this one does not change a run in flight):

- the short baselines (IQL, TD3+BC: about 10 minutes each) of a (dataset, seed) on lines of
  their own, to move where a cut-off loses little (the last half hour of a session: a lane
  killed then loses a few minutes, not a 40-minute `ipd` trial and its shared stages);
- each (dataset, seed) with trials left, chained with the `dwm` re-evaluations of its ``ipd``
  (pi_QOP) and ReBRAC runs at the step size of the dataset (the spec's comment says how they
  were chosen);
- a recorded ``ipd`` or ReBRAC run with no `dwm` row whose folder is gone (a fresh machine) is
  trained again with ``--reproduce`` (which also checks it against the record), then
  re-evaluated;

seed by seed, in that order.

    python benchmarks/tools/table_v2_queue.py --worktree /work/wt22 > /work/q/queue.txt
    benchmarks/tools/lanes.sh /work/q/queue.txt laneA laneB

Run it from the checkout whose record is current (after ``ipd sweep ... --collect``). When
nothing is left it prints no line and says so on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from ipd_plugins.sweep import Trial, expand, find_finished, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = "benchmarks/experiments/table_v2.yaml"
DWM_ROWS = ROOT / "benchmarks" / "results" / "table_v2_dwm.jsonl"
SHORT = ("iql", "td3+bc")
#: the `dwm` step size per dataset and actor (table_v2.yaml's comment: chosen on the tuning seeds)
DWM_LR = {"qop": dict.fromkeys(
    ["hopper-medium", "hopper-medium-replay", "halfcheetah-medium", "halfcheetah-medium-replay",
     "walker2d-medium", "walker2d-medium-replay"], "1e-6")}  # fmt: skip
DWM_LR["policy"] = {**DWM_LR["qop"], "hopper-medium-replay": "1e-5",
                    "halfcheetah-medium": "5e-5", "halfcheetah-medium-replay": "5e-5"}  # fmt: skip
ADAPTED = {"ipd": "qop", "rebrac": "policy"}  # method label -> the actor `dwm` adapts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worktree", required=True, help="the pinned checkout the lines run from")
    ap.add_argument("--out", default="/work/runs/table_v2", help="run folders + stage cache")
    ap.add_argument("--venv", default=os.environ.get("VIRTUAL_ENV", "/work/venv"))
    ap.add_argument("--minari", default=os.environ.get("MINARI_DATASETS_PATH", "/work/minari"))
    ap.add_argument("--record", type=Path, help="finished runs (default: the spec's record)")
    ap.add_argument("--dwm-rows", type=Path, default=DWM_ROWS, help="the `dwm` rows (jsonl)")
    args = ap.parse_args()
    wt, out = Path(args.worktree).resolve(), str(Path(args.out).resolve())
    record, rows_file = args.record and args.record.resolve(), args.dwm_rows.resolve()
    os.chdir(ROOT)  # the spec's record is relative to the checkout
    spec = dataclasses.replace(load_spec(ROOT / SPEC), out=out)
    if record:
        spec = dataclasses.replace(spec, record=str(record))
    trials = [t for t in expand(spec) if t.error is None]
    rows = [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()]
    have = {(Path(r["run"]).parent.name, Path(r["run"]).name, r["actor"]) for r in rows}

    env = f". {args.venv}/bin/activate && export PYTHONPATH={wt} MINARI_DATASETS_PATH={args.minari}"
    prefix = f"cd {wt} && {env} && ipd sweep {wt / SPEC} --serial --out {out}"

    def sweep(seed: int, dataset: str, *extra: str) -> str:
        return " ".join([prefix, f"--seeds {seed} --datasets {dataset}", *extra])

    def dwm(t: Trial) -> str:
        actor = ADAPTED[t.label]
        return (
            f"python {wt}/benchmarks/experiments/dwm_scores.py --out {rows_file} "
            f"--runs {t.run_dir} --lrs {DWM_LR[actor][t.dataset]}"
            + (" --actor qop" if actor == "qop" else "")
        )

    pending: dict[tuple[int, str], list[Trial]] = {}
    reproduce: dict[int, list[str]] = {}
    for t in trials:
        done = find_finished(t, spec.record)
        folder = Path(t.run_dir)
        if done is None:
            pending.setdefault((t.seed, t.dataset), []).append(t)
        elif t.label in ADAPTED and (folder.parent.name, folder.name, ADAPTED[t.label]) not in have:
            line = sweep(t.seed, t.dataset, f"--methods '{t.label}'")
            if not (folder / "results.json").exists():
                line += " --reproduce"
            reproduce.setdefault(t.seed, []).append(f"{line} && {dwm(t)}")
    lines = []
    names = [str(d["dataset"]) for d in spec.datasets]
    for seed in spec.seeds:
        here = [(d, pending[seed, d]) for d in names if (seed, d) in pending]
        for dataset, ts in here:
            if any(t.label in SHORT for t in ts):
                lines.append(sweep(seed, dataset, f"--methods {','.join(SHORT)}"))
        lines += reproduce.get(seed, [])
        for dataset, ts in here:
            if any(t.label not in SHORT for t in ts):
                chained = [dwm(t) for t in ts if t.label in ADAPTED]
                lines.append(" && ".join([sweep(seed, dataset), *chained]))
    if lines:
        print("\n".join(lines))
    else:
        print(f"nothing left: every trial of {SPEC} and `dwm` row is recorded", file=sys.stderr)


if __name__ == "__main__":
    main()
