"""fp32 against bf16 autocast for each trainable stage: loss curves, speed, fraction of peak.

For the value learner (`qov`), the world model (`pe`) and the sequence policy (`ipd-dt`), at
the sizes of ``--profile``, on a made dataset (default hopper-medium):

- **Loss curves on the same batches.** Each component trains ``--curve-steps`` steps from the
  same initial weights with the same minibatches (both come from the seed), once per precision;
  the table lists the logged losses side by side.
- **Speed.** Fits of n and 2n steps (n = ``--speed-steps``, 10x that for the value learner and
  the world model); n over the difference of their wall
  times is the rate without setup or final passes. fp32 and bf16 alternate for ``--rounds``
  rounds so that machine load hits both alike; the median steps/s and their ratio.
- **Fraction of peak.** FLOPs per training step (``torch.utils.flop_counter``: the matmuls of
  the forward and backward passes, counted as the difference between a 2-step and a 1-step
  fit) times steps/s, over the peak of a 2048^3 matmul measured in the same process with the
  same threads and dtype.

    python benchmarks/speed/precision.py --threads 1 --out benchmarks/results/precision.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

STAGES = ("value", "world_model", "policy")
#: the value learner and world model take 10-50x more steps per second than the policy: time
#: them over 10x the steps, so that the steps, not the fit's setup, make the difference
SPEED_STEPS_FACTOR = {"value": 10, "world_model": 10, "policy": 1}
#: what each stage's loss-curve table shows (keys of its ``log`` calls)
CURVE_KEYS = {
    "value": ("v_loss", "q_loss"),
    "world_model": ("loss", "holdout_obs_mse_norm"),
    "policy": ("mse", "loss"),
}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA)"
    from ipd_plugins.hardware import machine_summary

    return machine_summary()


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of an n^3 matmul in ``dtype`` on ``device`` (best of ``reps``)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


class Stage:
    """Builds and fits one component of ``kind`` at ``precision`` on the benchmark's data."""

    def __init__(self, kind: str, cfg, dataset, ctx, value=None):
        self.kind, self.cfg, self.dataset, self.ctx, self.value = kind, cfg, dataset, ctx, value

    def fit(self, precision: str, n_steps: int, log=None, every: int = 0) -> tuple[dict, float]:
        import dataclasses

        from registry import get_registry

        ctx = dataclasses.replace(self.ctx, precision=precision)
        reg = get_registry()
        name = {"value": "qov", "world_model": "pe", "policy": "ipd-dt"}[self.kind]
        overrides = {**self.cfg, "n_steps": n_steps}
        if self.kind == "world_model":  # held-out passes only where a curve point is wanted
            overrides.update(eval_every=every or n_steps + 1, patience=0)
        elif every:
            overrides["log_every"] = every
        component = reg.create(self.kind, name, overrides, ctx)
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # progress bars
            if self.kind == "policy":
                metrics = component.fit(self.dataset, self.value, log=log)
            else:
                metrics = component.fit(self.dataset, log=log)
        return metrics, time.perf_counter() - t


def flops_per_step(stage: Stage, precision: str) -> float:
    counts = []
    for n in (1, 2):
        with FlopCounterMode(display=False) as fc:
            stage.fit(precision, n)
        counts.append(fc.get_total_flops())
    return float(counts[1] - counts[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="hopper-medium")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--curve-steps", type=int, default=600)
    ap.add_argument("--speed-steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu_check.sh)")
    ap.add_argument("--out", default=None, help="write the tables here (markdown)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ipd_plugins.data.sources import resolve_dataset
    from ipd_plugins.pipeline import context_for
    from ipd_plugins.run_config import resolve_config

    dataset = resolve_dataset(args.dataset, echo=lambda m: print(m, file=sys.stderr))
    ctx = context_for(dataset, seed=0, device=args.device)
    cfg = resolve_config(run={"profile": args.profile})
    sections = {k: cfg.configs[k].to_dict() for k in STAGES}
    value = None
    stages = {}
    for kind in args.stages.split(","):
        if kind == "policy" and value is None:  # the policy needs V(s) and Q: a short fit
            from registry import get_registry

            value = get_registry().create("value", "qov", {**sections["value"], "n_steps": 200},
                                          ctx)  # fmt: skip
            with contextlib.redirect_stderr(io.StringIO()):
                value.fit(dataset)
        stages[kind] = Stage(kind, sections[kind], dataset, ctx, value)

    lines = [
        "## Machine",
        "",
        f"{device_name(args.device)}; torch {torch.__version__}, {args.threads} thread(s). "
        f"Command: `python benchmarks/speed/precision.py --threads {args.threads} --profile "
        f"{args.profile} --dataset {args.dataset} --device {args.device}`.",
        "",
    ]
    dtypes = (("fp32", torch.float32), ("bf16", torch.bfloat16))
    peaks = {p: matmul_peak(d, args.device) for p, d in dtypes}
    lines += [
        f"Matmul peak (2048^3, same process): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s.",
        "",
        "## Speed and fraction of peak",
        "",
        "| stage | sizes | fp32 steps/s | bf16 steps/s | bf16 / fp32 | MFLOP per step | "
        "fp32 % of peak | bf16 % of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    curves: dict[str, dict[str, dict[int, dict]]] = {}
    for kind, stage in stages.items():
        flops = flops_per_step(stage, "fp32")
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for precision in rates:  # warm-up
            stage.fit(precision, 2)
        n = args.speed_steps * SPEED_STEPS_FACTOR[kind]
        for _ in range(args.rounds):
            for precision in rates:  # n more steps over the difference: no setup, no final pass
                _, short = stage.fit(precision, n)
                _, long = stage.fit(precision, 2 * n)
                rates[precision].append(n / max(long - short, 1e-9))
        med = {p: statistics.median(r) for p, r in rates.items()}
        sizes = ", ".join(f"{k}={v}" for k, v in stage.cfg.items()
                          if k in ("hidden", "n_hidden", "n_layers", "n_layer", "n_embd",
                                   "batch_size", "context", "ensemble_size"))  # fmt: skip
        frac = {p: 100 * flops * med[p] / peaks[p] for p in med}
        row = (f"| {kind} | {sizes} | {med['fp32']:.1f} | {med['bf16']:.1f} | "
               f"{med['bf16'] / med['fp32']:.2f}x | {flops / 1e6:.1f} | {frac['fp32']:.1f}% | "
               f"{frac['bf16']:.1f}% |")  # fmt: skip
        print(row, flush=True)
        lines.append(row)
        curves[kind] = {}
        for precision in ("fp32", "bf16"):
            logged: dict[int, dict] = {}
            every = max(1, args.curve_steps // 6)
            stage.fit(precision, args.curve_steps, log=lambda s, d, o=logged: o.update({s: d}),
                      every=every)  # fmt: skip
            curves[kind][precision] = logged

    lines += ["", "## Loss curves on the same batches (same seed, same initial weights)", ""]
    for kind, by_p in curves.items():
        keys = CURVE_KEYS[kind]
        head = " | ".join(f"{k} fp32 | {k} bf16" for k in keys)
        lines += [f"### {kind}", "", f"| step | {head} |", "|---:|" + "---:|" * 2 * len(keys)]
        for step, info in sorted(by_p["fp32"].items()):
            bf = by_p["bf16"].get(step, {})
            cells = " | ".join(
                f"{info.get(k, float('nan')):.4g} | {bf.get(k, float('nan')):.4g}" for k in keys
            )
            lines.append(f"| {step} | {cells} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
