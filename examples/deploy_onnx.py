"""Act with an exported ipd policy in its gymnasium environment: onnxruntime and numpy, no torch.

    ipd export runs/<run>/seed_0 --format onnx --out policy.onnx      # ipd-dt: V(s_t) inside
    python examples/deploy_onnx.py policy.onnx --episodes 10           # the episodes of `ipd eval`

Needs ``pip install onnxruntime gymnasium`` (plus ``gymnasium[mujoco]`` for MuJoCo tasks), not
ipd or torch. The file's ``ipd`` metadata says what the graph takes. A sequence policy
(``ipd-dt``, ``dt``) gets the last K steps, right-aligned with the newest step last; this
script keeps that window itself (:class:`Window`), as ipd's ``SequenceActor`` does:

    states (1,K,O)      observations; zeros on the left padding of the first K-1 steps
    actions (1,K,A)     the actions taken; zero at the newest step (the one being decided)
    returns_to_go (1,K) ``dt`` only: target_return minus the rewards so far, at each step
    timesteps (1,K)     each step's time in the episode; mask (1,K): False on the padding

A state graph (``--actor qop``, baselines but d3rlpy's DT) takes the observation alone. Actions
are clipped to the action space, and episode i starts from ``env.reset(seed=SEED + i)``, with
SEED the file's ``eval_seed`` unless ``--seed`` is given: the episodes ``ipd eval`` plays.
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np
import onnxruntime as ort


class Window:
    """The K-step context of one episode (B=1), newest step last."""

    def __init__(self, K: int, obs_dim: int, act_dim: int, target_return: float | None):
        self.K, self.obs_dim, self.act_dim = K, obs_dim, act_dim
        self.target_return = target_return
        self.reset()

    def reset(self) -> None:
        K = self.K
        self.states = np.zeros((1, K, self.obs_dim), np.float32)
        self.actions = np.zeros((1, K, self.act_dim), np.float32)
        self.returns_to_go = np.zeros((1, K), np.float32)
        self.timesteps = np.zeros((1, K), np.int64)
        self.mask = np.zeros((1, K), np.bool_)
        self.t = 0  # time of the next step in the episode
        # dt: the return still asked for, in float32 as ipd's actor keeps it
        self.rtg = None if self.target_return is None else np.float32(self.target_return)

    def push(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """Drop the oldest step, append ``obs`` as the newest; the graph's inputs."""
        for name in ("states", "actions", "returns_to_go", "timesteps", "mask"):
            buf = getattr(self, name)
            buf[:, :-1] = buf[:, 1:].copy()
        self.states[0, -1] = obs
        self.actions[0, -1] = 0.0  # the action being decided: a placeholder the graph ignores
        self.returns_to_go[0, -1] = 0.0 if self.rtg is None else self.rtg
        self.timesteps[0, -1] = self.t
        self.mask[0, -1] = True
        self.t += 1
        return {
            "states": self.states,
            "actions": self.actions,
            "returns_to_go": self.returns_to_go,
            "timesteps": self.timesteps,
            "mask": self.mask,
        }

    def observe(self, reward: float) -> None:
        """``dt``: the reward of the last step comes off the return still asked for."""
        if self.rtg is not None:
            self.rtg = np.float32(self.rtg - np.float32(reward))


class OnnxPolicy:
    """An ``ipd export`` ONNX file: ``act(obs (O,)) -> (A,)``, ``observe(reward)``."""

    def __init__(self, path: str, target_return: float | None = None):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        if "ipd" not in props:
            raise SystemExit(f"{path} has no 'ipd' metadata: export it with `ipd export`")
        self.meta = meta = json.loads(props["ipd"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.window = None
        if meta["graph"] == "window":
            target = meta.get("target_return") if target_return is None else target_return
            rtg = target if "returns_to_go" in self.inputs else None
            self.window = Window(meta["context"], meta["obs_dim"], meta["act_dim"], rtg)
        elif meta["graph"] != "state":
            raise SystemExit(f"{path}: a '{meta['graph']}' graph; this example runs ipd's own")

    def reset(self) -> None:
        if self.window is not None:
            self.window.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32).reshape(-1)
        if self.window is None:
            feed = {self.inputs[0]: obs[None]}
        else:
            window = self.window.push(obs)
            feed = {name: window[name] for name in self.inputs}
        (action,) = self.session.run(None, feed)  # (1, A)
        if self.window is not None:
            self.window.actions[0, -1] = action[0]  # the step's action, before any clipping
        return action[0]

    def observe(self, reward: float) -> None:
        if self.window is not None:
            self.window.observe(reward)


def run_episode(policy: OnnxPolicy, env: gym.Env, seed: int) -> tuple[float, int]:
    """One episode from ``env.reset(seed=seed)``: (return, length)."""
    low, high = env.action_space.low, env.action_space.high
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    policy.reset()
    total, steps, done = 0.0, 0, False
    while not done:
        action = np.clip(policy.act(obs), low, high).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(action.reshape(low.shape))
        policy.observe(float(reward))
        total += float(reward)
        steps += 1
        done = terminated or truncated
    return total, steps


def main(argv: list[str] | None = None) -> dict[str, list]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an ONNX file written by `ipd export --format onnx`")
    parser.add_argument("--env", help="gymnasium id (default: the file's env_id)")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--seed", type=int, help="reset seed of episode 0 (default: eval_seed)")
    parser.add_argument("--target-return", type=float, help="dt: the return asked for")
    args = parser.parse_args(argv)

    policy = OnnxPolicy(args.model, args.target_return)
    env = gym.make(args.env or policy.meta["env_id"])
    first = policy.meta["eval_seed"] if args.seed is None else args.seed
    returns, lengths = [], []
    try:
        for i in range(args.episodes):
            ret, length = run_episode(policy, env, first + i)
            print(f"episode {i}: return {ret:.2f} in {length} steps")
            returns.append(ret)
            lengths.append(length)
    finally:
        env.close()
    result = {"returns": returns, "lengths": lengths}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
