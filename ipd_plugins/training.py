"""Training plumbing shared by plugins: seeding, tensor-side sampling, resumable checkpoints.

Checkpoints are written and read with :mod:`ipd_plugins.files` (atomic, weights-only).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipd_plugins.files import atomic_save, safe_load

__all__ = [
    "seed_everything",
    "Checkpointer",
    "checkpoint_seconds",
    "TransitionSampler",
]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(
            np.frombuffer(repr(random.getstate()).encode(), dtype=np.uint8).copy()
        ),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(bytes(state["python"].numpy()).decode()))


class Checkpointer:
    """Periodic, resumable training checkpoints in ``work_dir/name.pt``.

    ``objects`` maps names to anything with ``state_dict``/``load_state_dict`` (modules,
    optimisers, schedulers); ``extra`` holds plain values (tensors, numbers, lists) that
    belong to the training state. With ``work_dir=None`` it does nothing. Each checkpoint also
    holds ``seconds``: the training time up to it, summed over the processes that resumed it
    (so a stage killed and resumed can report what it cost; :func:`checkpoint_seconds`).
    """

    def __init__(self, work_dir: Path | None, every: int, name: str = "train_state"):
        self.path = Path(work_dir) / f"{name}.pt" if work_dir is not None else None
        self.every = max(1, int(every))
        self.seconds_before = 0.0  # training time of earlier processes, from the checkpoint
        self._t0 = time.perf_counter()

    def restore(self, objects: dict[str, Any], extra: dict[str, Any] | None = None) -> int:
        """Load the last checkpoint into ``objects``/``extra``; the step to resume at (0: fresh)."""
        if self.path is None or not self.path.exists():
            return 0
        state = safe_load(self.path)
        for key, obj in objects.items():
            obj.load_state_dict(state["objects"][key])
        if extra is not None:
            extra.update(state.get("extra", {}))
        _set_rng_state(state["rng"])
        self.seconds_before = float(state.get("seconds", 0.0))
        return int(state["step"])

    def maybe_save(
        self,
        step: int,
        objects: dict[str, Any],
        extra: dict[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        """Save when ``step`` is a multiple of ``every`` (or ``force``)."""
        if self.path is None or (not force and step % self.every != 0):
            return
        atomic_save(
            {
                "step": step,
                "objects": {k: o.state_dict() for k, o in objects.items()},
                "extra": extra or {},
                "rng": _rng_state(),
                "seconds": self.seconds_before + time.perf_counter() - self._t0,
            },
            self.path,
        )

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def checkpoint_seconds(folder: Path) -> float:
    """The training time the checkpoints in ``folder`` hold (0 for none or unreadable ones)."""
    seconds = 0.0
    for path in sorted(Path(folder).glob("*train_state.pt")):
        try:  # safe_load raises ValueError for a broken file (the stage then starts afresh)
            seconds += float(safe_load(path).get("seconds", 0.0))
        except (ValueError, OSError, AttributeError, TypeError):
            continue
    return seconds


class TransitionSampler:
    """Uniform minibatches of (s, a, r, s', terminated), drawn tensor-side (no loop per row)."""

    def __init__(self, dataset: Any, device: str = "cpu", generator: torch.Generator | None = None):
        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, np.float32), device=device)

        self.obs = t(dataset.observations)
        self.act = t(dataset.actions)
        self.rew = t(dataset.rewards)
        self.next_obs = t(dataset.next_observations)
        self.done = t(dataset.terminations)
        self.size = self.obs.shape[0]
        self.device = device
        self.generator = generator

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (batch_size,), generator=self.generator).to(self.device)
        return {
            "obs": self.obs[idx],
            "act": self.act[idx],
            "rew": self.rew[idx],
            "next_obs": self.next_obs[idx],
            "done": self.done[idx],
        }
