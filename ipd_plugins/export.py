"""A trained actor as one self-contained TorchScript or ONNX graph, for deployment without ipd.

``ipd export RUN --format torchscript|onnx --out FILE [--actor policy|qop]`` (issue 25). What each
actor becomes:

* ``policy`` of an ``ipd run`` (``ipd-dt``, ``dt``): a window graph over the last K steps,
  right-aligned with the newest step last, exactly the window :class:`SequenceActor` builds::

      states (B,K,O) float32   raw observations, zeros on left padding
      actions (B,K,A) float32  the actions taken, zeros on padding and at the newest step
      returns_to_go (B,K)      float32, ``dt`` only: the running return-to-go of each step
      timesteps (B,K) int64    each step's time in its episode (0 at reset), 0 on padding
      mask (B,K) bool          False on the left padding of the first K-1 steps of an episode
      -> action (B,A) float32  the action of the newest step, in the action bounds

  For ``ipd-dt`` the value network is inside: the token of every step is
  ``(V(s_t) - cond_shift) / cond_scale``, V computed from ``states``; for ``dt`` the token is
  ``returns_to_go / rtg_scale``. Tokens of padded steps are zero, as the actor's.
* ``qop``, the value learner's pi_QOP (``value.act(obs, deterministic=True)``):
  ``obs (B,O) float32 -> action (B,A) float32``.
* an ``ipd baseline`` run folder: d3rlpy's own ``save_policy`` graph (``input_0 (B,O) ->
  output_0 (B,A)``; d3rlpy's DT: its unbatched window ``observation_0 (K,O), action (K,A),
  return_to_go (K,1), timestep (K,)``). The ``--actor`` option does not apply.

Every file carries its metadata as JSON (:func:`read_metadata`): the ONNX model's metadata
property ``ipd``, the TorchScript archive's extra file ``ipd.json``. It holds the inputs, the
environment id, the action bounds, the context K, ``dt``'s ``target_return`` and ``eval_seed``,
the reset seed of the first episode ``ipd eval`` plays (episode i: ``eval_seed + i``).
``examples/deploy_onnx.py`` acts with it through onnxruntime and numpy only.

How the graphs are made: ``torch.jit.trace`` of a wrapper module that calls the trained networks
themselves (the policy's :class:`~ipd_plugins.policies.base.PolicyNet`, the value learner's own
``v``/``act``), so the graph computes what ``ipd eval`` computes. One piece is swapped: the
transformer's attention mask is built for every window from index comparisons
(:class:`MaskedTransformer`), because the original skips it for a full window (a branch on the
data, which a trace would freeze) and builds it with a boolean ``eye`` (onnxruntime has no
boolean ``EyeLike``). ONNX files come from torch's TorchScript-based exporter (``dynamo=False``,
opset 17): the torch.export-based default needs the extra package ``onnxscript`` and cannot
take d3rlpy's traced functions, so d3rlpy's ``save_policy`` writes TorchScript and this module
converts that to ONNX the same way. The batch size B is free in both formats; K is fixed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ipd_plugins.files import atomic_write

__all__ = [
    "FORMATS",
    "ACTORS",
    "EXPORT_FORMAT",
    "Exportable",
    "ExportResult",
    "MaskedTransformer",
    "LearnerFunction",
    "WindowPolicy",
    "StatePolicy",
    "policy_graph",
    "qop_graph",
    "save_graph",
    "export_run",
    "read_metadata",
]

#: ``--format`` values.
FORMATS: tuple[str, ...] = ("torchscript", "onnx")
#: ``--actor`` values: the distilled sequence policy, or the value learner's pi_QOP.
ACTORS: tuple[str, ...] = ("policy", "qop")
#: ``metadata["format"]`` of the files written here.
EXPORT_FORMAT = "ipd.export/1"
#: ONNX operator set of the exported graphs (onnxruntime >= 1.14 runs it).
OPSET = 17


# -- graphs --------------------------------------------------------------------------------
class MaskedTransformer(nn.Module):
    """:class:`~ipd_plugins.policies.gpt.CausalTransformer` with its padding mask always
    applied, built from index comparisons: ``(B,L,C), key_valid (B,L) -> (B,L,C)``.

    Shares the blocks and final LayerNorm of ``transformer``. The mask is the original's
    (a query sees earlier valid keys, and itself), so a full window gives the causal mask that
    the original applies through ``is_causal=True``. Evaluation only: no dropout.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.blocks, self.ln_f = transformer.blocks, transformer.ln_f
        self.max_tokens = transformer.max_tokens

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        B, L, C = x.size()
        assert L <= self.max_tokens, f"{L} tokens, the transformer takes {self.max_tokens}"
        idx = torch.arange(L, device=x.device)
        query, key = idx[:, None], idx[None, :]  # (L, 1), (1, L)
        if key_valid is None:
            key_valid = torch.ones(B, L, dtype=torch.bool, device=x.device)
        attn_mask = ((key <= query) & key_valid[:, None, :]) | (key == query)  # (B, L, L)
        attn_mask = attn_mask[:, None]  # (B, 1, L, L), broadcast over heads
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)


class LearnerFunction(nn.Module):
    """A method of a trained component as a module: ``fn(x)``, with every torch module the
    component holds registered here, so that a trace keeps their weights as parameters."""

    def __init__(self, owner: Any, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.owned = nn.ModuleList(_torch_modules(owner))
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _torch_modules(owner: Any) -> list[nn.Module]:
    """The ``nn.Module`` attributes of ``owner``, and the modules of any attribute with d3rlpy's
    ``get_torch_modules()`` (d3rlpy-iql's networks), each once."""
    found: dict[int, nn.Module] = {}
    for value in vars(owner).values():
        if isinstance(value, nn.Module):
            found.setdefault(id(value), value)
        elif callable(getattr(value, "get_torch_modules", None)):
            for module in value.get_torch_modules().values():
                found.setdefault(id(module), module)
    return list(found.values())


class WindowPolicy(nn.Module):
    """A sequence policy's window graph: the K-step window -> the newest step's action.

    ``forward(states (B,K,O), actions (B,K,A), cond (B,K) raw, timesteps (B,K), mask (B,K))``
    -> ``(B,A)``; with ``value`` given (``ipd-dt``) ``cond`` is not an input: V(s) of every
    state of the window plus ``value_offset`` (``policy.token_shift`` in V's units) is. The
    token is ``(raw - cond_shift) / cond_scale``, zero on padding.
    """

    def __init__(self, net: nn.Module, value: nn.Module | None = None, value_offset: float = 0.0):
        super().__init__()
        net = copy.deepcopy(net).eval()  # the caller's network keeps its own transformer
        net.model.transformer = MaskedTransformer(net.model.transformer)
        self.net, self.value, self.value_offset = net, value, value_offset

    def tokens(self, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,K) raw conditioning -> (B,K) tokens, exactly zero on padding."""
        token = (raw - self.net.cond_shift) / self.net.cond_scale
        return torch.where(mask, token, torch.zeros_like(token))

    def act(self, states, actions, raw, timesteps, mask) -> torch.Tensor:
        cond = self.tokens(raw, mask)
        return self.net(states, actions, cond, mask, timesteps)[:, -1]  # (B,A)

    def forward(self, states, actions, *rest: torch.Tensor) -> torch.Tensor:
        if self.value is None:  # dt: (returns_to_go, timesteps, mask)
            raw, timesteps, mask = rest
        else:  # ipd-dt: (timesteps, mask); V(s_t) of every step of the window
            timesteps, mask = rest
            B, K, O = states.shape
            raw = self.value(states.reshape(B * K, O)).reshape(B, K) + self.value_offset
        return self.act(states, actions, raw, timesteps, mask)


class StatePolicy(nn.Module):
    """A memoryless actor: ``obs (B,O) -> action (B,A)`` (pi_QOP)."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.act(obs)


# -- what to export ------------------------------------------------------------------------
@dataclass
class Exportable:
    """A module to trace, its example inputs and their names, and the file's metadata."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]  # name -> example (B=2), in the graph's argument order
    output: str
    metadata: dict[str, Any]


def _window_example(B: int, K: int, O: int, A: int, rtg: bool) -> dict[str, torch.Tensor]:
    """A window with left padding on one row (any values: the trace keeps no branch on them)."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, : K // 2] = False
    out = {
        "states": torch.randn(B, K, O, generator=gen),
        "actions": torch.zeros(B, K, A),
    }
    if rtg:
        out["returns_to_go"] = torch.randn(B, K, generator=gen)
    out["timesteps"] = torch.arange(K).repeat(B, 1)
    out["mask"] = mask
    return out


def policy_graph(policy: Any, value: Any) -> Exportable:
    """The window graph of a trained ``ipd-dt`` (V(s_t) inside) or ``dt`` (return-to-go in)."""
    from ipd_plugins.policies.dt import DtPolicy
    from ipd_plugins.policies.ipd_dt import IpdDtPolicy

    name = policy.cfg.name
    if isinstance(policy, IpdDtPolicy):
        if value is None:
            raise ValueError("policy 'ipd-dt' acts with V(s_t) tokens; its value learner is needed")
        module = WindowPolicy(policy.net, LearnerFunction(value, value.v), policy.token_offset())
        rtg = False
    elif isinstance(policy, DtPolicy):
        module, rtg = WindowPolicy(policy.net), True
    else:
        raise ValueError(
            f"policy '{name}' cannot be exported: export knows the conditioning token of "
            "'ipd-dt' (V(s_t)) and 'dt' (return-to-go) only"
        )
    model = policy.net.model
    K, O, A = model.context, model.obs_dim, model.act_dim
    meta: dict[str, Any] = {"graph": "window", "context": K}
    if rtg:
        meta["target_return"] = float(policy.cfg.target_return)
    elif policy.cfg.token_shift:
        meta["token_shift"] = float(policy.cfg.token_shift)
    return Exportable(module.eval(), _window_example(2, K, O, A, rtg), "action", meta)


def qop_graph(value: Any, obs_dim: int) -> Exportable:
    """pi_QOP of a trained value learner: ``value.act(obs, deterministic=True)``."""
    act = LearnerFunction(value, lambda obs: value.act(obs, deterministic=True))
    example = {"obs": torch.randn(2, obs_dim, generator=torch.Generator().manual_seed(0))}
    return Exportable(StatePolicy(act).eval(), example, "action", {"graph": "state"})


# -- files ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the trace's warnings about shape asserts (the shapes are static here) and the
    deprecation notices of ``torch.jit.trace`` (torch 2.13: TorchScript is what was asked for)
    and of the TorchScript-based ONNX exporter (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message="no signature found for <torch.ScriptMethod")
        yield


def save_graph(
    module: nn.Module | torch.jit.ScriptModule,
    inputs: dict[str, torch.Tensor],
    output: str,
    fmt: str,
    out: str | Path,
    metadata: dict[str, Any],
    batch_axis: bool = True,
) -> None:
    """Trace ``module`` on ``inputs`` (a ScriptModule is taken as it is) and write it to ``out``
    as ``fmt`` with ``metadata``. ``batch_axis``: axis 0 of every input and of the output is
    the batch, of any size in the ONNX file (a traced TorchScript graph takes any anyway)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    meta = json.dumps(metadata, sort_keys=True)
    args = tuple(inputs.values())
    with _quiet(), torch.no_grad():
        if fmt == "torchscript":
            graph = module
            if not isinstance(module, torch.jit.ScriptModule):
                graph = torch.jit.trace(module, args, check_trace=False)
            extra = {"ipd.json": meta}
            atomic_write(out, lambda f: torch.jit.save(graph, f, _extra_files=extra))
            return
        import onnx

        names = [*inputs, output]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "graph.onnx"
            torch.onnx.export(  # traces an nn.Module itself
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(inputs),
                output_names=[output],
                dynamic_axes={name: {0: "batch"} for name in names} if batch_axis else None,
            )
            model = onnx.load(str(path))
    # the exporter leaves out an input the graph does not use (``timesteps`` when the policy
    # embeds places in the window): the metadata names the file's own inputs
    kept = {i.name for i in model.graph.input}
    if set(inputs) - kept:
        metadata = {**metadata, "inputs": [n for n in metadata.get("inputs", inputs) if n in kept]}
        if "shapes" in metadata:
            shapes = metadata["shapes"].items()
            metadata["shapes"] = {n: v for n, v in shapes if n in kept or n == output}
        meta = json.dumps(metadata, sort_keys=True)
    onnx.helper.set_model_props(model, {"ipd": meta})
    onnx.checker.check_model(model)
    atomic_write(out, lambda f: f.write(model.SerializeToString()))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``ipd`` metadata of an exported file (ONNX or TorchScript)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no exported graph at {path}")
    if path.read_bytes()[:2] == b"PK":  # a TorchScript archive is a zip file
        extra = {"ipd.json": ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra["ipd.json"])
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "ipd" not in props:
        raise ValueError(f"{path} has no 'ipd' metadata: not written by `ipd export`")
    return json.loads(props["ipd"])


# -- run folders -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote."""

    path: Path
    format: str
    metadata: dict[str, Any]

    def describe(self) -> str:
        """One line per input and the output, with shapes."""
        m = self.metadata
        return "\n".join(f"  {name} {shape}" for name, shape in m["shapes"].items())


def _common_metadata(ctx: Any, seed: int, run_dir: Path) -> dict[str, Any]:
    from ipd_plugins.evaluate import EVAL_SEED

    return {
        "format": EXPORT_FORMAT,
        "env_id": ctx.env_id,
        "obs_dim": ctx.obs_dim,
        "act_dim": ctx.act_dim,
        "act_low": [float(x) for x in ctx.act_low],
        "act_high": [float(x) for x in ctx.act_high],
        "seed": seed,
        "eval_seed": EVAL_SEED + seed,
        "run": str(run_dir),
    }


def _shapes(inputs: dict[str, torch.Tensor], output: str, act_dim: int) -> dict[str, str]:
    """name -> "(B,5,3) float32"; the batch axis is B, the output (B,A)."""
    out = {}
    for name, x in inputs.items():
        dims = ",".join(["B", *(str(d) for d in x.shape[1:])])
        out[name] = f"({dims}) {str(x.dtype).removeprefix('torch.')}"
    out[output] = f"(B,{act_dim}) float32"
    return out


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    actor: str = "policy",
    echo: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``actor`` of the finished ``ipd run`` (or ``ipd baseline``) seed folder
    ``run_dir`` to ``out`` as ``fmt`` ("torchscript" or "onnx")."""
    from ipd_plugins.run_config import load_config_file

    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if actor not in ACTORS:
        raise ValueError(f"--actor must be one of {', '.join(ACTORS)}, got {actor!r}")
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(
            f"{run_dir} has no config.yaml: not an `ipd run` or `ipd baseline` seed folder "
            "(runs/<run>/seed_<k>)"
        )
    if "baseline" in load_config_file(run_dir / "config.yaml"):
        if actor != "policy":
            raise ValueError(f"{run_dir} is a baseline run: it has one actor, not '{actor}'")
        return _export_baseline(run_dir, fmt, Path(out), echo)
    return _export_ipd(run_dir, fmt, Path(out), actor, echo)


def _unfinished(run_dir: Path, what: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"{run_dir} has no finished {what} to export ({err}); finish the run first: "
        f"`ipd run --config {run_dir / 'config.yaml'}` resumes it"
    )


def _export_ipd(run_dir: Path, fmt: str, out: Path, actor: str, echo: Callable) -> ExportResult:
    from ipd_plugins.data.runs import load_trained

    kinds = ("value", "policy") if actor == "policy" else ("value",)
    try:
        trained = load_trained(run_dir, kinds=kinds, echo=lambda msg: None)
    except FileNotFoundError as err:
        raise _unfinished(run_dir, "policy" if actor == "policy" else "value learner", err) from err
    value = trained.components["value"]
    if actor == "policy":
        policy = trained.components["policy"]
        graph = policy_graph(policy, value)
        component = trained.cfg.components["policy"]
    else:
        graph = qop_graph(value, trained.ctx.obs_dim)
        component = trained.cfg.components["value"]
    meta = {
        **_common_metadata(trained.ctx, trained.cfg.run.seed, run_dir),
        "actor": actor,
        "component": component,
        "inputs": list(graph.inputs),
        "output": graph.output,
        "shapes": _shapes(graph.inputs, graph.output, trained.ctx.act_dim),
        **graph.metadata,
    }
    echo(f"exporting {actor} ({component}) of {run_dir} as {fmt}")
    save_graph(graph.module, graph.inputs, graph.output, fmt, out, meta)
    return ExportResult(out, fmt, meta)


def _export_baseline(run_dir: Path, fmt: str, out: Path, echo: Callable) -> ExportResult:
    """d3rlpy's ``save_policy`` graph (TorchScript), converted to ONNX when asked."""
    from ipd_plugins.baselines.run import load_trained_baseline
    from ipd_plugins.data.runs import read_stages

    try:
        read_stages(run_dir)
    except FileNotFoundError as err:
        raise _unfinished(run_dir, "baseline", err) from err
    trained = load_trained_baseline(run_dir)
    baseline, ctx = trained.baseline, trained.ctx
    algo = baseline.config.name
    O, A = ctx.obs_dim, ctx.act_dim
    if baseline.is_dt:  # d3rlpy's DT graph takes one window, without a batch axis
        K = int(baseline.config.context)
        inputs = {
            "observation_0": torch.rand(K, O),
            "action": torch.rand(K, A),
            "return_to_go": torch.rand(K, 1),
            "timestep": torch.arange(K),
        }
        shapes = {"observation_0": f"({K},{O}) float32", "action": f"({K},{A}) float32",
                  "return_to_go": f"({K},1) float32", "timestep": f"({K},) int64",
                  "output_0": f"({A},) float32"}  # fmt: skip
        extra = {"graph": "d3rlpy-dt", "context": K, "target_return": baseline.target_return}
    else:
        inputs = {"input_0": torch.rand(1, O)}
        shapes, extra = _shapes(inputs, "output_0", A), {"graph": "state"}
    meta = {
        **_common_metadata(ctx, trained.settings.seed, run_dir),
        "actor": "baseline",
        "component": algo,
        "inputs": list(inputs),
        "output": "output_0",
        "shapes": shapes,
        **extra,
    }
    echo(f"exporting baseline {algo} of {run_dir} as {fmt} (d3rlpy's save_policy)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.pt"
        baseline.modules.set_eval()
        with _quiet():
            baseline.algo.save_policy(str(path))
        scripted = torch.jit.load(str(path), map_location="cpu")
    save_graph(scripted, inputs, "output_0", fmt, out, meta, batch_axis=not baseline.is_dt)
    return ExportResult(out, fmt, meta)
