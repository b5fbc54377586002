"""The plugin registry: lookup, errors, configs, real entry-point discovery."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import registry
from registry import (
    BuildContext,
    ComponentConfig,
    PluginRegistry,
    added_later,
    config_hash,
    hookimpl,
    identity_dict,
)
from registry import hookspecs as specs
from registry.manager import _builtin_modules

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class _PlannerA(ComponentConfig):
    """A test planner."""

    kind = "planner"
    name = "dup"
    horizon: int = 10
    gamma: float = 0.99
    use_v: bool = True
    widths: tuple[int, ...] = (256, 256)
    kappa: float | None = None

    def create(self, ctx: BuildContext) -> tuple[str, int]:
        return ("A", ctx.obs_dim)


@dataclass
class _PlannerB(_PlannerA):
    def create(self, ctx: BuildContext) -> tuple[str, int]:
        return ("B", ctx.obs_dim)


def _plugin(name: str, *classes: type) -> types.ModuleType:
    mod = types.ModuleType(name)

    @hookimpl
    def ipd_register_planner():
        return list(classes)

    mod.ipd_register_planner = ipd_register_planner
    return mod


def test_create_and_names_from_plugins():
    reg = PluginRegistry(builtins=(_plugin("plug_a", _PlannerA),), entry_points=False)
    assert reg.names("planner") == ["dup"]
    ctx = BuildContext(obs_dim=7, act_dim=2, act_low=(-1, -1), act_high=(1, 1))
    assert reg.create("planner", "dup", {"horizon": 3}, ctx) == ("A", 7)
    assert reg.config("planner", "dup", {"horizon": "3"}).horizon == 3


def test_unknown_name_lists_known_names():
    reg = PluginRegistry(builtins=(_plugin("plug_a", _PlannerA),), entry_points=False)
    with pytest.raises(KeyError, match=r"no planner named 'nope'; known planner names: dup"):
        reg.create("planner", "nope")
    with pytest.raises(KeyError, match="unknown component kind 'planners'"):
        reg.names("planners")


def test_duplicate_names_fail_naming_both():
    with pytest.raises(ValueError) as err:
        PluginRegistry(
            builtins=(_plugin("plug_a", _PlannerA), _plugin("plug_b", _PlannerB)),
            entry_points=False,
        )
    msg = str(err.value)
    assert "two plugins claim the planner name 'dup'" in msg
    assert "_PlannerA" in msg and "_PlannerB" in msg


def test_wrong_kind_and_non_config_are_refused():
    @dataclass
    class Wrong(_PlannerA):
        kind = "policy"
        name = "wrong"

    with pytest.raises(TypeError, match="kind 'policy'"):
        PluginRegistry(builtins=(_plugin("p", Wrong),), entry_points=False)
    with pytest.raises(TypeError, match="not a ComponentConfig class"):
        PluginRegistry(builtins=(_plugin("p", dict),), entry_points=False)


def test_config_round_trip_and_coercion():
    cfg = _PlannerA.from_dict(
        {"horizon": "1e1", "gamma": "0.5", "use_v": "false", "widths": "64,32"}
    )
    assert (cfg.horizon, cfg.gamma, cfg.use_v, cfg.widths) == (10, 0.5, False, (64, 32))
    assert _PlannerA.from_dict(cfg.to_dict()) == cfg
    assert _PlannerA.from_dict({"kappa": "none"}).kappa is None
    assert _PlannerA.from_dict({"kappa": "2.5"}).kappa == 2.5
    with pytest.raises(ValueError, match=r"has no option\(s\) horizn; valid options: .*horizon"):
        _PlannerA.from_dict({"horizn": 3})
    with pytest.raises(ValueError, match="expected an integer"):
        _PlannerA.from_dict({"horizon": "2.5"})
    with pytest.raises(ValueError, match="expected true/false"):
        _PlannerA.from_dict({"use_v": "maybe"})


def test_config_hash_changes_with_values_only():
    a, b = _PlannerA(), _PlannerA()
    assert config_hash(a, "x") == config_hash(b, "x")
    assert config_hash(a) != config_hash(_PlannerA(horizon=11))
    assert config_hash(a, "x") != config_hash(a, "y")


@dataclass
class _PlannerLater(_PlannerA):
    """``_PlannerA`` after two options were added: one at the old behaviour by default, one
    whose new default changes it (old runs did ``"greedy"``)."""

    depth: int = added_later(3)
    mode: str = added_later("mpc", before="greedy")


def test_added_later_field_at_its_old_behaviour_keeps_the_hash():
    old = _PlannerA(horizon=12)
    assert config_hash(_PlannerLater(horizon=12, mode="greedy")) == config_hash(old)
    assert identity_dict(_PlannerLater(horizon=12, mode="greedy")) == old.to_dict()
    # at another value, or at a default that changes behaviour, it is part of the identity
    assert config_hash(_PlannerLater(horizon=12, mode="greedy", depth=4)) != config_hash(old)
    assert config_hash(_PlannerLater(horizon=12)) != config_hash(old)
    assert identity_dict(_PlannerLater(horizon=12))["mode"] == "mpc"
    assert "depth" not in identity_dict(_PlannerLater())
    # to_dict (what a run folder's config.yaml holds) still writes every field
    assert _PlannerLater().to_dict()["depth"] == 3


def test_disabled_plugins_env(monkeypatch):
    monkeypatch.setenv("IPD_DISABLED_PLUGINS", "plug_a")
    reg = PluginRegistry(builtins=(_plugin("plug_a", _PlannerA),), entry_points=False)
    assert reg.names("planner") == []


def test_every_hook_is_documented_and_tested():
    """Each hookspec has a docstring, appears in the README with its signature, and has a test."""
    readme = (ROOT / "README.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    hooks = [n for n, f in vars(specs).items() if n.startswith("ipd_register_") and callable(f)]
    assert len(hooks) == len(registry.ALL_KINDS)
    for hook in hooks:
        fn = getattr(specs, hook)
        assert inspect.getdoc(fn), hook
        assert f"{hook}()" in readme, f"{hook} is not documented in README.md"
        assert f"def test_hook_{hook}" in tests, f"no test_hook_{hook}"


def _kind_registered(kind: str) -> list[str]:
    return PluginRegistry(builtins=_builtin_modules(), entry_points=False).names(kind)


def test_hook_ipd_register_value():
    assert "qov" in _kind_registered("value")


def test_hook_ipd_register_world_model():
    assert "pe" in _kind_registered("world_model")


def test_hook_ipd_register_uncertainty():
    assert {"gjs", "disagreement", "aleatoric", "none"} <= set(_kind_registered("uncertainty"))


def test_hook_ipd_register_planner():
    assert {"mpc", "greedy"} <= set(_kind_registered("planner"))


def test_hook_ipd_register_policy():
    assert {"ipd-dt", "dt"} <= set(_kind_registered("policy"))


def test_hook_ipd_register_baseline():
    """Built-in baselines come through the hook, and a plugin's baseline is their peer."""
    from ipd_plugins.baselines import BaselineConfig

    assert {"iql", "cql", "td3+bc", "bc", "dt"} <= set(_kind_registered("baseline"))

    @dataclass
    class ConstantBaseline(BaselineConfig):
        name = "constant"

    plugin = types.ModuleType("ipd_constant_baseline")

    @hookimpl
    def ipd_register_baseline():
        return [ConstantBaseline]

    plugin.ipd_register_baseline = ipd_register_baseline
    reg = PluginRegistry(builtins=(*_builtin_modules(), plugin), entry_points=False)
    assert "constant" in reg.names("baseline") and "iql" in reg.names("baseline")
    built = reg.create("baseline", "constant", {"n_steps": 3})
    assert built.config.n_steps == 3
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        reg.config("baseline", "constant", {"n_steps": 0})


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """The example plugin really installed (pip, into a private target folder)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples/random_planner"),
        ],
        check=True,
    )
    return target


def test_entry_point_discovery_finds_example_plugin(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    reg = PluginRegistry(builtins=(), entry_points=True)
    (row,) = reg.registrations("planner")
    assert (row.name, row.source) == ("random", "ipd-random-planner 0.1.0")
    ctx = BuildContext(obs_dim=3, act_dim=2, act_low=(-1.0, 0.0), act_high=(1.0, 2.0))
    planner = reg.create("planner", "random", {"seed": 1}, ctx)
    import torch

    acts = planner.plan(torch.zeros(500, 3), None)
    assert acts.shape == (500, 2)
    assert acts[:, 0].min() >= -1 and acts[:, 0].max() <= 1 and acts[:, 1].min() >= 0
    assert acts[:, 1].max() > 1.5  # spread over the box, not a constant


def test_ipd_plugins_cli_lists_builtins_and_example(installed_example):
    env_path = f"{installed_example}"
    out = subprocess.run(
        [sys.executable, "-c", "from ipd_plugins.commands import main; main()", "plugins"],
        env={**__import__("os").environ, "PYTHONPATH": env_path},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"^\s+random\s+ipd-random-planner 0.1.0", out, re.M), out
    assert re.search(r"^\s+qov\s+built-in", out, re.M), out
    for kind in registry.KINDS:
        assert re.search(rf"^{kind}$", out, re.M)


def test_plugins_cli_in_process():
    from ipd_plugins.commands import main

    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "world_model" in result.output and "uncertainty" in result.output


def test_plugins_cli_shows_one_components_options_and_names_bad_ones():
    from ipd_plugins.commands import main

    result = CliRunner().invoke(main, ["plugins", "value", "qov"])
    assert result.exit_code == 0, result.output
    assert "--set value.OPTION=VALUE" in result.output
    assert re.search(r"^\s+tau\s+0\.7\s+float$", result.output, re.M), result.output
    bad = CliRunner().invoke(main, ["plugins", "value", "nope"])
    assert bad.exit_code != 0 and "known value names:" in bad.output and "qov" in bad.output
    bad_kind = CliRunner().invoke(main, ["plugins", "values", "qov"])
    assert bad_kind.exit_code != 0 and "'values' is not one of" in bad_kind.output


@pytest.mark.parametrize("kind, name", [("value", "d3rlpy-iql"), ("policy", "ipd-dt")])
def test_plugins_cli_prints_docs_as_plain_text(kind, name):
    """No RST roles, double backticks or LaTeX commands reach the terminal."""
    from ipd_plugins.commands import main

    out = CliRunner().invoke(main, ["plugins", kind, name]).output
    assert "``" not in out and ":math:" not in out and ".. math::" not in out
    assert "\\" not in out and "\\tau" not in out and "mathbb" not in out, out
