"""Imaginary data augmentation (paper sec. 3.3, Algorithm 1).

1. **Identification** (eq. 17-22). Every state s_t with H_con steps of history and H_I steps of
   future in its trajectory is a candidate. Its gap R_imagine(s_t) - R_real(s_t) compares H_I
   steps of pi_QOP in the world model with the logged H_I steps (both discounted, both
   bootstrapped with gamma^H_I V at the end; the paper's eq. 17-18 omit that gamma^H_I, eq. 25
   has it: we use it everywhere so the two returns are n-step returns of the same kind). Per
   trajectory the top K = min(floor(N_aug |tau| / H_I), #candidates) states are selected.
2. **Rollout** (Alg. 1). From every selected state, H_I planner steps in the world model; a
   step is kept only while U(s, a) < kappa (eq. 12, kappa from
   :mod:`ipd_plugins.uncertainty.reliable`) and the rollout ends at a predicted
   termination. Each rollout with at least one kept step becomes a new trajectory: the real
   H_con steps before s_t followed by the imagined steps (rewards from the reward model).

Everything is batched over states (and over candidates inside the planner) and runs under
``torch.inference_mode()``. The augmented dataset records provenance per step in ``extras``:
``imagined`` (bool) and ``source_index`` (the real step s_t a segment grew from; -1 for the
original data). Given a ``work_dir``, both chunk loops checkpoint there, and a killed call
resumes at its last finished chunk with the same result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.returns import discounted_return
from ipd_plugins.training import Checkpointer
from registry import PlanningContext, UncertaintyMetric, ValueLearner, WorldModel
from registry.config import added_later
from registry.protocols import Planner

__all__ = [
    "AugmentConfig",
    "AugmentResult",
    "augment",
    "candidate_states",
    "select_top_k",
    "cap_segments",
]


@dataclass
class AugmentConfig:
    """Imaginary augmentation settings (table 3 defaults).

    Args:
        n_aug: N_aug, augmentation ratio of eq. 21 (0 disables augmentation).
        horizon: H_I, imagined steps per selected state.
        context: H_con, real history steps kept before each selected state.
        gamma: discount of R_imagine / R_real.
        max_share: the most the segments (H_con real + up to H_I imagined steps each) may be of
            the policy's training steps; beyond it only the states with the largest gaps of
            eq. 20 are kept. None: no cap (eq. 21 alone, the paper).
    """

    n_aug: float = 1.0  # N_aug (eq. 21): more -> more imagined data (the paper's scaling claim)
    horizon: int = 10  # H_I (table 3)
    context: int = 10  # H_con (table 3)
    gamma: float = 0.99  # discount in eq. 17-18
    chunk_size: int = 4096  # states per batched chunk; larger is faster until memory runs out
    require_improvement: bool = False  # keep only states with R_imagine > R_real (paper: off)
    max_episodes: int | None = None  # augment a random subset of episodes (CPU budget); None: all
    # cap on the segments' share of the policy's data. Why: eq. 21 makes the segments about as
    # many steps as the data, from a world model that saw only that data; on 5 hopper episodes
    # (64% segments) ipd-dt scored 48.3 with them and 73.2 without (small_data.md). None: no cap
    max_share: float | None = added_later(None)

    def __post_init__(self) -> None:
        if self.n_aug < 0:
            raise ValueError(f"augment.n_aug must be >= 0, got {self.n_aug}")
        if self.horizon < 1 or self.context < 0:
            raise ValueError(
                f"augment.horizon must be >= 1 and augment.context >= 0, got {self.horizon} "
                f"and {self.context}"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"augment.gamma must be in (0, 1], got {self.gamma}")
        if self.chunk_size < 1:
            raise ValueError(f"augment.chunk_size must be >= 1, got {self.chunk_size}")
        if self.max_share is not None and not 0.0 < self.max_share < 1.0:
            raise ValueError(
                f"augment.max_share must be in (0, 1) (or none: no cap), got {self.max_share}"
            )
        if self.max_episodes is not None and self.max_episodes < 1:
            raise ValueError(
                f"augment.max_episodes must be >= 1 (or none: every episode), "
                f"got {self.max_episodes}"
            )


@dataclass
class AugmentResult:
    dataset: TrajectoryDataset  # the original data followed by the augmented segments
    segments: TrajectoryDataset | None  # the augmented segments alone (None: nothing kept)
    report: dict[str, Any] = field(default_factory=dict)


def _t(x: np.ndarray, device: str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, np.float32), device=device)


# -- identification (eq. 17-22) -------------------------------------------------------------
def candidate_states(
    episode_lengths: np.ndarray, context: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Global step indices of the candidate states and their episode (eq. 19).

    A step t (0-based inside its episode of length T) is a candidate when t >= H_con and
    t + H_I <= T: H_con real steps before it and H_I logged steps from it.
    """
    lengths = np.asarray(episode_lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    episode = np.repeat(np.arange(len(lengths)), lengths)
    local = np.arange(int(lengths.sum())) - starts[episode]
    mask = (local >= context) & (local + horizon <= lengths[episode])
    return np.flatnonzero(mask), episode[mask]


def cap_segments(
    chosen: np.ndarray, gap: np.ndarray, n_logged: int, segment_steps: int, max_share: float
) -> np.ndarray:
    """The ``chosen`` positions whose segments keep within ``max_share`` of the training steps.

    With S segments of ``segment_steps`` steps each next to ``n_logged`` logged steps, the share
    is S L / (S L + N); at most floor(share / (1 - share) N / L) segments fit. The largest gaps
    (eq. 20's ranking) are kept, ties by position; the result stays in ``chosen``'s order.
    """
    limit = int(np.floor(max_share / (1.0 - max_share) * n_logged / segment_steps + 1e-9))
    if len(chosen) <= limit:
        return chosen
    order = np.lexsort((np.arange(len(chosen)), -gap[chosen]))[:limit]
    return chosen[np.sort(order)]


def select_top_k(
    gap: np.ndarray,
    episode: np.ndarray,
    episode_lengths: np.ndarray,
    n_aug: float,
    horizon: int,
) -> np.ndarray:
    """Positions (into ``gap``) of the top-K gaps per episode, K = min(floor(N_aug |tau| / H_I), C).

    Eq. 20-22. Ties keep the earlier state. Returned in episode order, best first.
    """
    k = np.floor(n_aug * np.asarray(episode_lengths, np.float64) / horizon + 1e-9).astype(np.int64)
    order = np.lexsort((np.arange(len(gap)), -gap, episode))  # by episode, then gap descending
    ep_sorted = episode[order]
    first = np.searchsorted(ep_sorted, ep_sorted, side="left")
    rank = np.arange(len(order)) - first
    return order[rank < k[ep_sorted]]


@torch.inference_mode()
def _imagine_policy_returns(
    obs: torch.Tensor,
    value: ValueLearner,
    world_model: WorldModel,
    horizon: int,
    gamma: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Eq. 17: H_I steps of pi_QOP's mean in the world model + gamma^H_I V at the end."""
    s = obs
    rewards, alive = [], [torch.ones(obs.shape[0], device=obs.device)]
    for _ in range(horizon):
        step = world_model.step(s, value.act(s, deterministic=True), generator=generator)
        rewards.append(step.reward)
        alive.append(alive[-1] * (~step.done).float())
        s = step.next_obs
    return discounted_return(torch.stack(rewards), torch.stack(alive), value.v(s), gamma)


def _real_returns(
    dataset: TrajectoryDataset,
    start: np.ndarray,
    n: np.ndarray,
    value: ValueLearner,
    gamma: float,
    device: str,
) -> torch.Tensor:
    """Eq. 18 over n[i] logged steps from global step start[i] (all inside the episode)."""
    h = int(n.max()) if len(n) else 0
    k = np.arange(h)
    rows = start[:, None] + np.minimum(k[None, :], n[:, None] - 1)  # (B,H), clamped in range
    valid = k[None, :] < n[:, None]
    rewards = _t(dataset.rewards[rows] * valid, device).T  # (H,B)
    last = start + n - 1
    alive = torch.ones(h + 1, len(start), device=device)
    # Only the last logged step of an episode can be terminal (t + n <= T).
    alive[-1] = _t(1.0 - dataset.terminations[last], device)
    v_end = value.v(_t(dataset.next_observations[last], device))
    disc = gamma ** torch.arange(h + 1, dtype=torch.float32, device=device)
    n_t = torch.as_tensor(n, device=device)
    return (disc[:h, None] * rewards).sum(0) + disc[n_t] * alive[-1] * v_end


# -- augmentation (Alg. 1) ------------------------------------------------------------------
class _ChunkLog:
    """The outputs of the finished chunks of both loops, checkpointed to resume a killed call.

    A checkpoint (``work_dir/augment_train_state.pt``, weights-only, at most every
    ``every_seconds``) holds those outputs, the augmentation's generator, the global RNGs
    (pi_QOP's samples in the planner draw from them) and the planner's transition count, so
    that the chunks after it see the same random streams as in an uninterrupted call. The
    stage cache keys the folder by the dataset and every setting, so a checkpoint found there
    belongs to this call, and deletes it once the stage's outputs are written. It also holds
    each loop's time so far, so that a resumed call reports what the whole loop cost.
    """

    def __init__(
        self,
        work_dir: Path | None,
        generator: torch.Generator,
        planner: Planner,
        every_seconds: float,
    ):
        self.ckpt = Checkpointer(work_dir, every=1, name="augment_train_state")
        self.generator, self.planner, self.every = generator, planner, every_seconds
        self.outputs: dict[str, list[Any]] = {"identify": [], "imagine": []}
        self.earlier = {"identify": 0.0, "imagine": 0.0}  # seconds of earlier processes
        extra: dict[str, Any] = {}
        if self.ckpt.restore({}, extra):  # also restores the global RNGs
            self.outputs = _to_numpy(extra["outputs"])
            self.earlier.update(extra.get("seconds", {}))
            generator.set_state(extra["generator"])
            if hasattr(planner, "simulated"):
                planner.simulated = int(extra["simulated"])
        self._saved = self._t0 = time.perf_counter()
        self._phase = ""

    def begin(self, phase: str) -> int:
        """Start timing ``phase`` (the phase before it stops); its number of chunks done."""
        if self._phase:
            self.earlier[self._phase] = self.seconds(self._phase)
        self._phase, self._t0 = phase, time.perf_counter()
        return len(self.outputs[phase])

    def seconds(self, phase: str) -> float:
        """``phase``'s time over every process that worked on it."""
        now = time.perf_counter() - self._t0 if phase == self._phase else 0.0
        return self.earlier[phase] + now

    def add(self, phase: str, output: Any) -> None:
        self.outputs[phase].append(output)
        if self.ckpt.path is not None and time.perf_counter() - self._saved >= self.every:
            extra = {
                "outputs": _to_torch(self.outputs),
                "generator": self.generator.get_state(),
                "simulated": int(getattr(self.planner, "simulated", 0)),
                "seconds": {phase: self.seconds(phase) for phase in self.earlier},
            }
            n_chunks = sum(len(v) for v in self.outputs.values())
            self.ckpt.maybe_save(n_chunks, {}, extra, force=True)
            self._saved = time.perf_counter()


def _to_torch(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, dict):
        return {k: _to_torch(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_torch(v) for v in x]
    return x


def _to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.numpy()
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_numpy(v) for v in x]
    return x


def augment(
    dataset: TrajectoryDataset,
    value: ValueLearner,
    world_model: WorldModel,
    uncertainty: UncertaintyMetric,
    planner: Planner,
    kappa: float,
    config: AugmentConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    work_dir: Path | None = None,
    save_every_seconds: float = 60.0,
) -> AugmentResult:
    """Identify suboptimal states and grow imagined continuations from them (Alg. 1).

    ``progress`` shows bars on a terminal (never in a log file: tqdm's automatic mode). With
    ``work_dir``, the loops checkpoint there every ``save_every_seconds`` (:class:`_ChunkLog`)
    and a call killed part-way resumes from it with the same result.
    """
    cfg = config or AugmentConfig()
    gen = torch.Generator(device=device).manual_seed(seed)
    report: dict[str, Any] = {"kappa": float(kappa)}
    cand, cand_ep = candidate_states(dataset.episode_lengths, cfg.context, cfg.horizon)
    if cfg.max_episodes is not None and cfg.max_episodes < dataset.n_episodes:
        rng = np.random.default_rng(seed)
        keep = rng.choice(dataset.n_episodes, cfg.max_episodes, replace=False)
        mask = np.isin(cand_ep, keep)
        cand, cand_ep = cand[mask], cand_ep[mask]
        report["episodes_considered"] = int(cfg.max_episodes)
    report["candidates"] = int(len(cand))
    if cfg.n_aug == 0 or len(cand) == 0:
        report.update(selected=0, imagined_steps_kept=0)
        return AugmentResult(dataset, None, report)

    log = _ChunkLog(work_dir, gen, planner, save_every_seconds)
    bars = {"disable": None if progress else True, "leave": False}

    # 1. identification, batched over all candidates
    chunks = range(0, len(cand), cfg.chunk_size)
    start = log.begin("identify")
    with torch.inference_mode():
        for lo in tqdm(chunks[start:], desc="identify", initial=start, total=len(chunks), **bars):
            rows = cand[lo : lo + cfg.chunk_size]
            r_im = _imagine_policy_returns(
                _t(dataset.observations[rows], device),
                value,
                world_model,
                cfg.horizon,
                cfg.gamma,
                gen,
            )
            n = np.full(len(rows), cfg.horizon)
            r_real = _real_returns(dataset, rows, n, value, cfg.gamma, device)
            log.add("identify", (r_im - r_real).float().cpu().numpy())
    gap = np.concatenate(log.outputs["identify"])
    report["identification_seconds"] = log.seconds("identify")
    report["identification_transitions"] = int(len(cand) * cfg.horizon)
    report["gap_mean_candidates"] = float(gap.mean())

    chosen = select_top_k(gap, cand_ep, dataset.episode_lengths, cfg.n_aug, cfg.horizon)
    if cfg.require_improvement:
        chosen = chosen[gap[chosen] > 0]
    if cfg.max_share is not None:
        segment_steps = cfg.context + cfg.horizon
        chosen = cap_segments(chosen, gap, dataset.n_steps, segment_steps, cfg.max_share)
    sel = cand[chosen]
    report["selected"] = int(len(sel))
    report["gap_mean_selected"] = float(gap[chosen].mean()) if len(chosen) else float("nan")
    if len(sel) == 0:
        report["imagined_steps_kept"] = 0
        return AugmentResult(dataset, None, report)

    # 2. rollouts from the selected states with the planner
    ctx = PlanningContext(value, world_model, uncertainty, float(kappa), gen)
    chunks = range(0, len(sel), cfg.chunk_size)
    start = log.begin("imagine")
    for lo in tqdm(chunks[start:], desc="imagine", initial=start, total=len(chunks), **bars):
        obs0 = dataset.observations[sel[lo : lo + cfg.chunk_size]]
        log.add("imagine", _rollout(obs0, ctx, planner, cfg, device))
    parts = log.outputs["imagine"]
    roll = {
        k: np.concatenate([p[k] for p in parts], axis=1 if k != "n_kept" else 0) for k in parts[0]
    }
    report["rollout_seconds"] = log.seconds("imagine")
    n_kept = roll["n_kept"]
    report["imagined_steps_kept"] = int(n_kept.sum())
    report["rollouts_with_steps"] = int((n_kept > 0).sum())
    report["cut_by_uncertainty"] = int(roll["cut"].sum())
    report["ended_by_termination"] = int(roll["ended"].sum())
    report["rollout_transitions"] = int(roll["simulated"].sum())
    planner_sim = int(getattr(planner, "simulated", 0))
    report["planner_transitions"] = planner_sim
    report["simulated_transitions"] = (
        report["identification_transitions"] + report["rollout_transitions"] + planner_sim
    )

    # gap after: the kept imagined steps vs the same number of logged steps
    has = n_kept > 0
    if has.any():
        with torch.inference_mode():
            r_real = _real_returns(dataset, sel[has], n_kept[has], value, cfg.gamma, device)
            r_aug = _segment_returns(roll, has, value, cfg.gamma, device)
        report["gap_mean_augmented"] = float((r_aug - r_real).mean())
    segments = _build_segments(dataset, sel, roll, cfg.context)
    out = dataset if segments is None else TrajectoryDataset.concatenate([dataset, segments])
    return AugmentResult(out, segments, report)


@torch.inference_mode()
def _rollout(
    obs0: np.ndarray, ctx: PlanningContext, planner: Planner, cfg: AugmentConfig, device: str
) -> dict[str, np.ndarray]:
    """H_I planner steps from each row; a row stops at an unreliable step or a termination.

    Returns (H,S,...) arrays of the kept steps, ``n_kept`` (S,), ``cut``/``ended`` (S,) bool.
    """
    s_all = _t(obs0, device)
    n_rows, h = s_all.shape[0], cfg.horizon
    obs = torch.zeros(h, n_rows, s_all.shape[1], device=device)
    nxt = torch.zeros_like(obs)
    act: torch.Tensor | None = None
    rew = torch.zeros(h, n_rows, device=device)
    done = torch.zeros(h, n_rows, dtype=torch.bool, device=device)
    n_kept = torch.zeros(n_rows, dtype=torch.long, device=device)
    cut = torch.zeros(n_rows, dtype=torch.bool, device=device)
    ended = torch.zeros(n_rows, dtype=torch.bool, device=device)
    active = torch.arange(n_rows, device=device)
    simulated = 0
    s = s_all
    for k in range(h):
        if len(active) == 0:
            break
        a = planner.plan(s, ctx)
        step = ctx.world_model.step(s, a, generator=ctx.generator)
        simulated += len(active)
        ok = ctx.reliable(step)
        if act is None:
            act = torch.zeros(h, n_rows, a.shape[1], device=device)
        keep = active[ok]
        obs[k, keep], act[k, keep], rew[k, keep] = s[ok], a[ok], step.reward[ok]
        nxt[k, keep], done[k, keep] = step.next_obs[ok], step.done[ok]
        n_kept[keep] += 1
        cut[active[~ok]] = True
        stop = ~ok | step.done
        ended[active[ok & step.done]] = True
        active, s = active[~stop], step.next_obs[~stop]
    assert act is not None
    return {
        "obs": obs.cpu().numpy(),
        "act": act.cpu().numpy(),
        "rew": rew.cpu().numpy(),
        "next_obs": nxt.cpu().numpy(),
        "done": done.cpu().numpy(),
        "n_kept": n_kept.cpu().numpy(),
        "cut": cut.cpu().numpy()[None],
        "ended": ended.cpu().numpy()[None],
        "simulated": np.array([[simulated]]),
    }


def _segment_returns(
    roll: dict[str, np.ndarray], rows: np.ndarray, value: ValueLearner, gamma: float, device: str
) -> torch.Tensor:
    """Discounted imagined return over the kept steps + gamma^n V(last next state)."""
    n = roll["n_kept"][rows]
    h = roll["rew"].shape[0]
    valid = np.arange(h)[:, None] < n[None, :]
    rewards = _t(roll["rew"][:, rows] * valid, device)
    last_next = roll["next_obs"][n - 1, np.flatnonzero(rows)]
    last_done = roll["done"][n - 1, np.flatnonzero(rows)]
    disc = gamma ** torch.arange(h + 1, dtype=torch.float32, device=device)
    boot = disc[torch.as_tensor(n, device=device)] * _t(1.0 - last_done, device)
    return (disc[:h, None] * rewards).sum(0) + boot * value.v(_t(last_next, device))


def _build_segments(
    dataset: TrajectoryDataset, sel: np.ndarray, roll: dict[str, np.ndarray], context: int
) -> TrajectoryDataset | None:
    """Real prefix (H_con steps before s_t) + kept imagined steps, one episode per rollout."""
    n_kept = roll["n_kept"]
    has = n_kept > 0
    if not has.any():
        return None
    sel, n_kept = sel[has], n_kept[has]
    s_count, h = len(sel), roll["rew"].shape[0]
    prefix = sel[:, None] - context + np.arange(context)[None, :]  # (S, H_con) global steps

    def seg(real: np.ndarray, imagined: np.ndarray) -> np.ndarray:
        # real: (S, H_con, ...) ; imagined: (H, S, ...) -> (S, H_con + H, ...)
        return np.concatenate([real, np.swapaxes(imagined[:, has], 0, 1)], axis=1)

    valid = np.concatenate(
        [np.ones((s_count, context), bool), np.arange(h)[None, :] < n_kept[:, None]], axis=1
    )
    imag_done = np.swapaxes(roll["done"][:, has], 0, 1)  # (S,H)
    terminated = seg(np.zeros((s_count, context), bool), roll["done"])
    truncated = np.zeros_like(terminated)
    last = context + n_kept - 1
    ended = imag_done[np.arange(s_count), n_kept - 1]
    truncated[np.arange(s_count), last] = ~ended
    arrays = {
        "observations": seg(dataset.observations[prefix], roll["obs"]),
        "actions": seg(dataset.actions[prefix], roll["act"]),
        "rewards": seg(dataset.rewards[prefix], roll["rew"]),
        "next_observations": seg(dataset.next_observations[prefix], roll["next_obs"]),
        "terminations": terminated,
        "truncations": truncated,
    }
    flat = {k: v[valid] for k, v in arrays.items()}
    extras = {
        "imagined": np.concatenate(
            [np.zeros((s_count, context), bool), np.ones((s_count, h), bool)], axis=1
        )[valid],
        "source_index": np.repeat(sel, context + n_kept).astype(np.int64),
        # time in the source episode: the prefix starts H_con steps before s_t
        "timestep": (dataset.timesteps()[sel][:, None] - context + np.arange(context + h)[None, :])[
            valid
        ],
    }
    return TrajectoryDataset.from_arrays(
        flat,
        context + n_kept,
        env_id=dataset.env_id,
        name=f"{dataset.name}+imagined",
        ref_min_score=dataset.ref_min_score,
        ref_max_score=dataset.ref_max_score,
        action_low=dataset.action_low,
        action_high=dataset.action_high,
        extras=extras,
    )
