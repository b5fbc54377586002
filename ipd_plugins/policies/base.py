"""What ``ipd-dt`` and ``dt`` share: the config fields, the training loop and the rolling actor.

The two plugins differ only in the conditioning scalar ``c_t`` (V(s_t) vs return-to-go) and in
the loss (eq. 26 vs plain MSE); everything else (network, sampling, optimiser, checkpoints,
acting with a rolling context over B environments) lives here.

Optimiser: AdamW (weight decay 1e-4 on all weights) with a linear warm-up of the learning rate
over ``warmup_steps`` and then a constant rate, and gradient-norm clipping: the recipe of the
Decision Transformer reference code (the paper says only "Adam, 3e-4").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ipd_plugins.files import atomic_save, safe_load
from ipd_plugins.hardware import autocast
from ipd_plugins.nn import Normalizer
from ipd_plugins.policies.gpt import POSITIONS, TOKEN_LAYOUTS, DecisionModel
from ipd_plugins.policies.sequence_data import SequenceSampler
from ipd_plugins.training import Checkpointer
from registry.config import ComponentConfig, added_later
from registry.protocols import BuildContext, Logger, ValueLearner

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = [
    "SequencePolicyConfig",
    "PolicyNet",
    "SequencePolicyBase",
    "SequenceActor",
    "TrainState",
    "masked_mse",
]


@dataclasses.dataclass
class SequencePolicyConfig(ComponentConfig):
    """Fields shared by the sequence policies (paper table 4 for the network).

    Args:
        context (int): K, the number of timesteps in the window (table 4: 20).
        n_layer (int): transformer blocks (table 4: 4).
        n_embd (int): embedding width (table 4: 256).
        n_head (int): attention heads (table 4: 4).
        dropout (float): dropout everywhere in the transformer (table 4: 0.01).
        token_layout (str): "vsa" (paper: 3 tokens per step), "sa" (V in the state token) or
            "s" (one token per step).
        position (str): "timestep" (embed each step's time in its episode, as DT/QT/d3rlpy)
            or "window" (embed its place in the K-step window).
        max_timestep (int): size of the timestep embedding; later times share its last row.
        position_init_std (float | None): std of the normal init of that embedding; None keeps
            PyTorch's N(0, 1); GPT-2 and d3rlpy's DT start it at 0.02.
        past_actions (bool): feed the past actions of the window (False: zeros, states only).
        few_episodes (int): below this many dataset episodes, window positions (and, for
            ``ipd-dt``, no Q term); 0 never.
        compile (bool): ``torch.compile`` the training forward pass.
        autocast_bf16 (bool): run the forward pass under bfloat16 autocast, whatever
            ``run.precision`` says (which turns it on for every component).
    """

    # timesteps per window (K); longer sees more history, costs ~linearly more
    context: int = 20
    # transformer depth; fewer layers train faster, may underfit
    n_layer: int = 4
    # embedding width; the main cost knob on CPU (compute ~ width^2)
    n_embd: int = 256
    # attention heads; must divide n_embd
    n_head: int = 4
    # dropout in attention, residuals and embeddings; raise on small datasets
    dropout: float = 0.01
    # "vsa": (c_t, s_t, a_t) tokens, the paper; "sa": c_t folded into the state token (2/3 of
    # the tokens); "s": one token s_t + c_t + a_{t-1} per step (1/3). Fewer tokens train faster
    # (measured vs "vsa" at the paper's size on CPU: "sa" 1.6x, "s" 3.1x; see
    # benchmarks/results/policy_speed.md) and may cost some score
    token_layout: str = "vsa"
    # "timestep": a learned embedding of each step's time in its episode (the Decision
    # Transformer / QT reference code and d3rlpy); "window": of its place in the K-step window
    position: str = "timestep"
    # a dataset with fewer episodes than this is "few": the policy embeds window positions
    # whatever `position` says, and ipd-dt drops eq. 26's Q term. Why: on 5 walker2d episodes a
    # timestep embedding memorises them (27.8 against 70.5 with window positions, BC 68.6) and
    # Q's action gradient is extrapolation (small_data.md). 0: never (DT and eq. 26 as written)
    few_episodes: int = added_later(0)
    # rows of the timestep embedding (DT's max episode length for MuJoCo: 1000); later steps
    # reuse the last row
    max_timestep: int = 1000
    # std of the position/timestep embedding's normal init; None: PyTorch's N(0, 1) (what every
    # run so far used); GPT-2 and d3rlpy's DT use 0.02, so the 1000 rarely-trained timestep rows
    # do not add unit-scale noise to every token
    position_init_std: float | None = added_later(None)
    # feed the window's past actions to the model (DT, eq. 26). False zeroes them: the policy
    # sees states and tokens only, so its own actions at acting time cannot differ from the
    # logged, noisier ones it trained on (benchmarks/results/small_data.md)
    past_actions: bool = added_later(True)
    # bfloat16 autocast for this transformer even where run.precision resolves to fp32 (weights
    # and optimiser stay fp32); run.precision=auto already turns it on where bf16 is native
    autocast_bf16: bool = False
    # torch.compile the training forward pass (first steps pay the compile time; the model
    # and checkpoints are the same). For GPUs and long runs; measure before using it on a CPU
    compile: bool = added_later(False)
    # AdamW learning rate (paper: 3e-4)
    learning_rate: float = 3e-4
    # AdamW weight decay
    weight_decay: float = 1e-4
    # linear learning-rate warm-up steps, then constant
    warmup_steps: int = 1000
    # gradient-norm clip (DT's 0.25); lower is more stable, slower
    grad_clip: float = 0.25
    # windows per minibatch
    batch_size: int = 64
    # gradient steps (DT/QT reference: 100k; CPU profiles lower it)
    n_steps: int = 100_000
    # periodic resumable checkpoint every this many steps (when fit gets a work_dir)
    checkpoint_every: int = 1000
    # report to `log` every this many steps
    log_every: int = 100

    def validate(self) -> None:
        if self.token_layout not in TOKEN_LAYOUTS:
            raise ValueError(
                f"{self.kind} '{self.name}': token_layout must be one of "
                f"{sorted(TOKEN_LAYOUTS)}, got {self.token_layout!r}"
            )
        if self.position not in POSITIONS:
            raise ValueError(
                f"{self.kind} '{self.name}': position must be one of {list(POSITIONS)}, "
                f"got {self.position!r}"
            )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"{self.kind} '{self.name}': n_embd={self.n_embd} must be divisible by "
                f"n_head={self.n_head}"
            )
        if self.few_episodes < 0:
            raise ValueError(
                f"{self.kind} '{self.name}': few_episodes must be >= 0, got {self.few_episodes}"
            )
        positive = ("context", "n_layer", "n_embd", "n_head", "batch_size", "max_timestep")
        for key in (*positive, "n_steps", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(
                    f"{self.kind} '{self.name}': {key} must be >= 1, got {getattr(self, key)}"
                )
        if self.warmup_steps < 0 or not self.learning_rate > 0 or not self.grad_clip > 0:
            raise ValueError(
                f"{self.kind} '{self.name}': warmup_steps must be >= 0, learning_rate and "
                f"grad_clip > 0; got {self.warmup_steps}, {self.learning_rate}, {self.grad_clip}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"{self.kind} '{self.name}': dropout must be in [0, 1), got {self.dropout}"
            )
        if self.position_init_std is not None and not self.position_init_std > 0:
            raise ValueError(
                f"{self.kind} '{self.name}': position_init_std must be > 0 or None, "
                f"got {self.position_init_std}"
            )


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid steps: (B,T,A), (B,T,A), (B,T) -> scalar."""
    m = mask.to(pred.dtype)
    per_step = ((pred - target) ** 2).mean(-1)  # (B, T)
    return (per_step * m).sum() / m.sum().clamp_min(1.0)


class PolicyNet(nn.Module):
    """The decision model plus the statistics it was trained with (all saved together)."""

    def __init__(self, cfg: SequencePolicyConfig, ctx: BuildContext, position: str | None = None):
        super().__init__()
        self.model = DecisionModel(
            ctx.obs_dim,
            ctx.act_dim,
            torch.tensor(ctx.act_low),
            torch.tensor(ctx.act_high),
            context=cfg.context,
            n_layer=cfg.n_layer,
            n_embd=cfg.n_embd,
            n_head=cfg.n_head,
            dropout=cfg.dropout,
            token_layout=cfg.token_layout,
            position=position or cfg.position,
            max_timestep=cfg.max_timestep,
            position_init_std=cfg.position_init_std,
            past_actions=cfg.past_actions,
        )
        self.obs_norm = Normalizer(ctx.obs_dim)
        # conditioning token = (raw - cond_shift) / cond_scale
        self.register_buffer("cond_shift", torch.zeros(()))
        self.register_buffer("cond_scale", torch.ones(()))

    def forward(self, obs, act, cond, mask, timesteps=None):  # raw obs; cond already scaled
        obs_n = self.obs_norm(obs) * mask.unsqueeze(-1)  # padding stays exactly zero
        return self.model(obs_n, act, cond, mask, timesteps)


@dataclasses.dataclass
class TrainState:
    """Everything one training run steps: sampler, parameters, optimiser, schedule, RNG."""

    sampler: SequenceSampler
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator


class SequencePolicyBase:
    """Training and acting for a :class:`PolicyNet`; subclasses define the conditioning/loss."""

    cfg: SequencePolicyConfig

    def __init__(self, cfg: SequencePolicyConfig, ctx: BuildContext):
        cfg.validate()
        self.cfg, self.ctx, self.device = cfg, ctx, ctx.device
        episodes = ctx.dataset_episodes
        #: trained on few episodes (``cfg.few_episodes``): window positions, no Q term
        self.few = episodes is not None and episodes < cfg.few_episodes
        torch.manual_seed(ctx.seed)  # weight init is a function of the seed
        position = "window" if self.few else cfg.position
        self.net = PolicyNet(cfg, ctx, position).to(self.device)

    def few_episodes_note(self) -> str | None:
        """What the few-episodes mode changed, for the run's log (None when it is off)."""
        if not self.few:
            return None
        return (
            f"{self.ctx.dataset_episodes} episodes < policy.few_episodes="
            f"{self.cfg.few_episodes}: {', '.join(self.few_episodes_changes())}"
        )

    def few_episodes_changes(self) -> list[str]:
        """The few-episodes mode's changes to this policy (subclasses add theirs)."""
        return ["window positions"]

    # -- what subclasses define --------------------------------------------------------------
    def raw_conditioning(
        self, dataset: TrajectoryDataset, value: ValueLearner | None
    ) -> np.ndarray:
        """(N,) the conditioning scalar of every dataset step, before scaling."""
        raise NotImplementedError

    def conditioning_stats(self, raw: np.ndarray) -> tuple[float, float]:
        """(shift, scale) so that the token is (raw - shift) / scale."""
        raise NotImplementedError

    def loss(
        self, pred: torch.Tensor, batch: dict[str, torch.Tensor], value: ValueLearner | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred (B,T,A) -> the scalar training loss and detached 0-d tensors to log."""
        raise NotImplementedError

    # -- training -----------------------------------------------------------------------------
    @property
    def bf16(self) -> bool:
        """bf16 autocast in training: the run's precision (``ctx.precision``) or this policy's
        own switch. Acting computes in fp32 (as an ONNX export does) unless ``autocast_bf16``."""
        return self.cfg.autocast_bf16 or self.ctx.precision == "bf16"

    def autocast(self):
        return autocast(self.device, "bf16" if self.bf16 else "fp32")

    def fit(
        self,
        dataset: TrajectoryDataset,
        value: ValueLearner | None,
        work_dir: Path | None = None,
        log: Logger | None = None,
    ) -> dict[str, float]:
        """Train for ``cfg.n_steps`` steps on ``dataset``; resumes from ``work_dir`` if it can."""
        cfg = self.cfg
        if dataset.obs_dim != self.ctx.obs_dim or dataset.act_dim != self.ctx.act_dim:
            raise ValueError(
                f"dataset has obs/act dims ({dataset.obs_dim}, {dataset.act_dim}) but the policy "
                f"was built for ({self.ctx.obs_dim}, {self.ctx.act_dim})"
            )
        state = self.start_training(dataset, value)
        ckpt = Checkpointer(work_dir, cfg.checkpoint_every, name="policy_train_state")
        objects = {"net": self.net, "opt": state.opt, "sched": state.sched}
        extra: dict[str, Any] = {}
        start = ckpt.restore(objects, extra)
        if start > 0:
            state.generator.set_state(extra["generator"])
        shift, scale = float(self.net.cond_shift), float(self.net.cond_scale)

        info: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        bar = tqdm(range(start, cfg.n_steps), desc=f"policy {self.cfg.name}", disable=None)
        for step in bar:
            info = self.train_step(state, value)
            done = step + 1
            # the numbers leave the device only here: no host synchronisation between logs
            if done % cfg.log_every == 0 or done == cfg.n_steps:
                floats = {k: float(v) for k, v in info.items()}
                bar.set_postfix(loss=f"{floats['loss']:.4f}")
                if log is not None:
                    log(done, {**floats, "lr": state.sched.get_last_lr()[0]})
            extra["generator"] = state.generator.get_state()
            ckpt.maybe_save(done, objects, extra)
        if start < cfg.n_steps:  # the finished state, so that a re-run is a no-op
            ckpt.maybe_save(cfg.n_steps, objects, extra, force=True)
        self.net.eval()
        elapsed = time.perf_counter() - t0
        trained = cfg.n_steps - start
        metrics = {f"train/{k}": float(v) for k, v in info.items()}
        metrics.update(
            steps=float(cfg.n_steps),
            resumed_at=float(start),
            steps_per_s=trained / elapsed if trained > 0 and elapsed > 0 else float("nan"),
            cond_shift=float(shift),
            cond_scale=float(scale),
            few_episodes_mode=float(self.few),
        )
        if "imagined" in dataset.extras:
            metrics["imagined_fraction"] = float(np.mean(dataset.extras["imagined"]))
        return metrics

    def start_training(self, dataset: TrajectoryDataset, value: ValueLearner | None) -> TrainState:
        """Conditioning arrays, normalisers, sampler, optimiser and schedule for ``fit``."""
        cfg = self.cfg
        raw = self.raw_conditioning(dataset, value)  # (N,), once for the whole dataset
        shift, scale = self.conditioning_stats(raw)
        self.net.cond_shift.fill_(shift)
        self.net.cond_scale.fill_(scale)
        self.net.obs_norm.fit(dataset.observations)
        cond = (raw - shift) / scale
        generator = torch.Generator().manual_seed(self.ctx.seed)
        sampler = SequenceSampler(dataset, cond, cfg.context, self.device, generator)
        self.train_forward = torch.compile(self.net) if cfg.compile else self.net
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        warmup = max(1, cfg.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        self.net.train()
        return TrainState(sampler, params, opt, sched, generator)

    def train_step(self, state: TrainState, value: ValueLearner | None) -> dict[str, torch.Tensor]:
        """One gradient step on a fresh minibatch of windows; returns the loss parts and the
        gradient norm before clipping (``grad_norm``; above ``grad_clip`` the step was clipped),
        as detached 0-d tensors."""
        batch = state.sampler.sample(self.cfg.batch_size)
        with self.autocast():
            pred = self.train_forward(
                batch["obs"], batch["act"], batch["cond"], batch["mask"], batch["timestep"]
            )
        loss, info = self.loss(pred.float(), batch, value)
        # gradients only for the policy's parameters: the value learner's stay untouched
        grads = torch.autograd.grad(loss, state.params)
        for p, g in zip(state.params, grads, strict=True):
            p.grad = g
        norm = nn.utils.clip_grad_norm_(state.params, self.cfg.grad_clip)  # before clipping
        state.opt.step()
        state.sched.step()
        return {**info, "grad_norm": norm.detach()}

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        atomic_save(self.net.state_dict(), path)

    def load(self, path: Path) -> None:
        state = safe_load(path)
        try:
            self.net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"{path} does not fit this {self.cfg.name} policy (different sizes or "
                f"token_layout?): {err}"
            ) from err
        self.net.to(self.device).eval()


class SequenceActor:
    """Acts in B environments at once with a rolling context of the last K steps per env.

    ``conditioning(obs (B,O)) -> (B,)`` gives the raw (unscaled) conditioning of the current step;
    ``on_reward(reward (B,))`` updates whatever state it keeps (the return-to-go for ``dt``).

    With ``state_conditioning`` (the conditioning is a function of the observation alone, as
    ``ipd-dt``'s V(s)) it is also a :class:`registry.protocols.AdaptableActor`: an imagined step
    is appended to the window like a real one, its token the conditioning of the imagined state
    (no gradient flows through the token), so imagined rollouts see the real context followed
    by the imagined steps.
    """

    def __init__(
        self,
        net: PolicyNet,
        conditioning: Callable[[torch.Tensor], torch.Tensor],
        on_reward: Callable[[torch.Tensor], None] | None = None,
        on_reset: Callable[[int], None] | None = None,
        device: str = "cpu",
        autocast_bf16: bool = False,
        state_conditioning: bool = False,
    ):
        self.net, self.device = net, device
        self._conditioning, self._on_reward, self._on_reset = conditioning, on_reward, on_reset
        self.autocast_bf16 = autocast_bf16
        self.state_conditioning = state_conditioning
        self.context = net.model.context
        self.obs = self.act_buf = self.cond = self.mask = self.time = None
        self.t = torch.zeros(0, dtype=torch.long)

    def reset(self, obs: torch.Tensor) -> None:
        obs = self._check(obs)
        B, K = obs.shape[0], self.context
        O, A = self.net.model.obs_dim, self.net.model.act_dim
        self.obs = torch.zeros(B, K, O, device=self.device)  # rolling windows, newest last
        self.act_buf = torch.zeros(B, K, A, device=self.device)
        self.cond = torch.zeros(B, K, device=self.device)  # scaled conditioning tokens
        self.mask = torch.zeros(B, K, dtype=torch.bool, device=self.device)
        self.time = torch.zeros(B, K, dtype=torch.long, device=self.device)  # time in episode
        self.t = torch.zeros(B, dtype=torch.long, device=self.device)  # time of the next act
        if self._on_reset is not None:
            self._on_reset(B)

    def _check(self, obs: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(obs, dtype=torch.float32).to(self.device)
        O = self.net.model.obs_dim
        assert obs.dim() == 2 and obs.shape[1] == O, f"obs must be (B,{O}), got {tuple(obs.shape)}"
        return obs

    def _advance(self, obs: torch.Tensor) -> None:
        """Append the current step to every env's window (its action slot a placeholder)."""
        if self.obs is None or self.obs.shape[0] != obs.shape[0]:
            raise RuntimeError(
                f"call reset() with the first observations of all {obs.shape[0]} envs before act()"
            )
        raw = torch.as_tensor(self._conditioning(obs), dtype=torch.float32).to(self.device)
        assert raw.shape == (obs.shape[0],), f"conditioning must be (B,), got {tuple(raw.shape)}"
        token = (raw - self.net.cond_shift) / self.net.cond_scale
        # drop the oldest step, append the current one (its action slot is a placeholder that the
        # state token cannot see: causality)
        self.obs = torch.cat([self.obs[:, 1:], obs[:, None]], dim=1)
        self.act_buf = torch.cat([self.act_buf[:, 1:], torch.zeros_like(self.act_buf[:, :1])], 1)
        self.cond = torch.cat([self.cond[:, 1:], token[:, None]], dim=1)
        self.mask = torch.cat([self.mask[:, 1:], torch.ones_like(self.mask[:, :1])], dim=1)
        self.time = torch.cat([self.time[:, 1:], self.t[:, None]], dim=1)
        self.t = self.t + 1

    def window(self) -> tuple[torch.Tensor, ...]:
        """What the network acts on: (obs, actions, tokens, mask, time), each (B, K, ...)."""
        return self.obs, self.act_buf, self.cond, self.mask, self.time

    @torch.inference_mode()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        obs = self._check(obs)
        self._advance(obs)
        was_training = self.net.training  # acting mid-fit (periodic evaluation) must not
        self.net.eval()  # leave dropout switched off for the rest of training
        with autocast(self.device, "bf16" if self.autocast_bf16 else "fp32"):
            pred = self.net(*self.window())  # (B,K,A)
        self.net.train(was_training)
        action = pred[:, -1].float()
        self.act_buf[:, -1] = action
        return action

    def observe(self, reward: torch.Tensor) -> None:
        if self._on_reward is not None:
            reward = torch.as_tensor(reward, dtype=torch.float32).to(self.device).reshape(-1)
            self._on_reward(reward)

    # -- AdaptableActor (inference-time adaptation) --------------------------------------------
    def adapt_parameters(self, which: str) -> dict[str, torch.Tensor]:
        """``which``: "all" (every weight of the transformer) or "head" (``model.head``)."""
        if not self.state_conditioning:
            raise ValueError(
                "this sequence policy conditions on something other than the state (e.g. dt's "
                "return-to-go, which depends on the rewards so far): its imagined steps cannot be "
                "conditioned, so it cannot be adapted (ipd-dt, conditioned on V(s), can)"
            )
        params = dict(self.net.named_parameters())
        if which == "all":
            return params
        if which == "head":
            return {k: v for k, v in params.items() if k.startswith("model.head.")}
        raise ValueError(f"sequence actor: which must be 'all' or 'head', got {which!r}")

    def imagine_start(self, n: int, context: int = 0) -> dict[str, torch.Tensor]:
        """The windows before the next real step, n copies per env, cut to the last
        ``context`` steps (0: all K): obs (B,n,c,O), act (B,n,c,A), cond/mask/time (B,n,c),
        t (B,n) the time of the next step."""
        if self.obs is None:
            raise RuntimeError("call reset() before imagining")
        c = min(context or self.context, self.context)

        def rows(w: torch.Tensor) -> torch.Tensor:
            w = w[:, -c:]
            w = w.clone() if w.is_inference() else w
            return w[:, None].expand(w.shape[0], n, *w.shape[1:])

        names = ("obs", "act", "cond", "mask", "time")
        windows = (self.obs, self.act_buf, self.cond, self.mask, self.time)
        memory = {k: rows(w) for k, w in zip(names, windows, strict=True)}
        t = self.t.clone() if self.t.is_inference() else self.t
        memory["t"] = t[:, None].expand(t.shape[0], n)
        return memory

    def _forward_per_env(self, params: dict[str, torch.Tensor], *windows: torch.Tensor):
        """(B,N,c,...) windows, params (B,...) -> (B,N,c,A): env b's windows through the
        network with env b's weights (a loop over B: the transformer branches on the mask,
        which ``torch.func.vmap`` cannot batch)."""
        from torch.func import functional_call

        was_training = self.net.training
        self.net.eval()  # no dropout while adapting or acting
        try:
            out = [
                functional_call(
                    self.net, {k: v[b] for k, v in params.items()}, tuple(w[b] for w in windows)
                )
                for b in range(windows[0].shape[0])
            ]
        finally:
            self.net.train(was_training)
        return torch.stack(out)

    def differentiable_act(
        self, obs: torch.Tensor, params: dict[str, torch.Tensor], memory: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B,N,O) imagined states appended to the windows -> (B,N,A) actions (differentiable
        w.r.t. the states and params) and the windows with the step and its action."""
        B, N, O = obs.shape
        with torch.no_grad():
            raw = torch.as_tensor(self._conditioning(obs.reshape(B * N, O).detach()))
            token = ((raw.to(self.device) - self.net.cond_shift) / self.net.cond_scale).reshape(
                B, N, 1
            )
        m = memory

        def push(w: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            return torch.cat([w[:, :, 1:], new.to(w.dtype)], dim=2)

        obs_w = push(m["obs"], obs[:, :, None])
        act_w = push(m["act"], torch.zeros_like(m["act"][:, :, :1]))
        cond_w = push(m["cond"], token)
        mask_w = push(m["mask"], torch.ones_like(m["mask"][:, :, :1]))
        time_w = push(m["time"], m["t"][..., None])
        action = self._forward_per_env(params, obs_w, act_w, cond_w, mask_w, time_w)[:, :, -1]
        act_w = torch.cat([act_w[:, :, :-1], action[:, :, None]], dim=2)
        new = {"obs": obs_w, "act": act_w, "cond": cond_w, "mask": mask_w, "time": time_w}
        new["t"] = m["t"] + 1
        return action, new

    @torch.no_grad()
    def act_with(self, obs: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`act` with env b's weights ``params[...][b]`` (fp32, no autocast)."""
        obs = self._check(obs)
        self._advance(obs)
        windows = (self.obs, self.act_buf, self.cond, self.mask, self.time)
        action = self._forward_per_env(params, *(w[:, None] for w in windows))[:, 0, -1]
        self.act_buf[:, -1] = action.to(self.act_buf.dtype)
        return action.float()
