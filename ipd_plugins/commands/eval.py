"""``ipd eval``: re-evaluate a finished run folder, optionally adapting its actors while they act.

Nothing retrains: the run's trained weights are loaded (an ``ipd baseline`` folder's world
model, for an adapter that needs one, comes from the stage cache: trained there once if no run
has trained it). ``--set policy.KEY=VALUE`` changes only the policy's acting options (its
config's ``acting_options`` and ``acting_only`` fields, e.g. ``gtp``'s sampler, ``dt``'s
``target_return``), never what it learned; ``--set baseline.KEY=VALUE`` a baseline's (the
d3rlpy DT's ``target_return``). Without
``--adapter``/``--set`` the scores go to the run's ``eval.json``; with them to
``eval_<adapter>_<hash>.json`` next to it, so the run's own scores stay.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ipd_plugins.commands.options import debug_option, echo, usage_errors
from ipd_plugins.commands.run import print_scores

__all__ = ["eval_run", "eval_file_name", "check_acting_options"]


def eval_file_name(adapter: str, config: Any, parts: tuple[Any, ...] = ()) -> str:
    """``eval_<adapter>_<hash of its config (and parts)>.json``."""
    from registry import config_hash

    return f"eval_{adapter}_{config_hash(config, *parts)[:8]}.json"


def check_acting_options(config: Any, keys: Any) -> None:
    """Fail unless every key is one of the config's ``acting_options`` or
    :func:`~registry.config.acting_only` fields (``config``: a policy's or a baseline's, an
    instance or its class)."""
    from registry.config import acting_only_fields

    cls = config if isinstance(config, type) else type(config)
    allowed = (*cls.acting_options, *acting_only_fields(config))
    bad = sorted(set(keys) - set(allowed))
    if bad:
        kind = getattr(config, "kind", "policy")
        takes = f"takes {', '.join(allowed)}" if allowed else "has none"
        command = f"ipd baseline {config.name}" if kind == "baseline" else "ipd run"
        raise ValueError(
            f"--set {kind}.{bad[0]}: `ipd eval` changes only how the trained {kind} acts, and "
            f"{kind} '{config.name}' {takes}; an option that changes training needs a new run "
            f"(`{command} --set {kind}.{bad[0]}=...`)"
        )


@click.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--episodes", type=click.IntRange(min=1), help="episodes (default: the run's)")
@click.option(
    "--adapter",
    help="adapt the actors' weights while they act, e.g. dwm (default: the run's, else none)",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="adapter.KEY=VALUE",
    help="an adapter option, e.g. --set adapter.lr=5e-5, or an acting option of the policy, "
    "e.g. --set policy.sampler=euler for gtp (repeatable; baseline folders take "
    "world_model.KEY=VALUE and their acting options, e.g. baseline.target_return=3600 for dt)",
)
@click.option(
    "--actor",
    "actors",
    multiple=True,
    type=click.Choice(["policy", "qop"]),
    help="evaluate only this actor of an `ipd run` folder (repeatable; default: the run's)",
)
@debug_option
def eval_run(
    run_dir: str,
    episodes: int | None,
    adapter: str | None,
    overrides: tuple[str, ...],
    actors: tuple[str, ...],
) -> None:
    """Re-evaluate the final actors of a finished `ipd run` or `ipd baseline` seed folder.

    The same evaluator as the run's (same episodes and seeds, D4RL-normalised). With
    `--adapter dwm` each actor adapts its weights through the world model while it acts
    (DWM-MPC), with no retraining: an `ipd run` folder uses its own world model and Q, an
    `ipd baseline` folder its critic and the dataset's `pe` world model (trained once in the
    stage cache, or reused from an `ipd run` on the same data, profile and seed).

    \b
    Examples:
      ipd eval runs/<run>/seed_0
      ipd eval runs/<run>/seed_0 --adapter dwm --set adapter.lr=5e-5
      ipd eval runs/<run>/seed_0 --adapter dwm --actor qop    # pi_QOP only
      ipd eval runs/<baseline-rebrac-run>/seed_0 --adapter dwm
      ipd eval runs/<gtp-run>/seed_0 --set policy.sampler=euler   # an acting option
      ipd eval runs/<baseline-dt-run>/seed_0 --set baseline.target_return=1800
    """
    from ipd_plugins.run_config import load_config_file, parse_overrides

    with usage_errors():
        is_baseline = "baseline" in load_config_file(Path(run_dir) / "config.yaml")
        sections = ("adapter", "world_model", "baseline") if is_baseline else ("adapter", "policy")
        parsed = parse_overrides(overrides, sections=sections)
    if is_baseline:
        scores, out = _eval_baseline(Path(run_dir), episodes, adapter, parsed)
    else:
        scores, out = _eval_ipd(Path(run_dir), episodes, adapter, parsed, actors or None)
    print_scores({"scores": scores})
    click.echo(json.dumps({k: v.get("normalized_mean") for k, v in scores.items()}))
    click.echo(f"scores: {out}")


def _eval_ipd(
    run_dir: Path,
    episodes: int | None,
    adapter: str | None,
    parsed: dict[str, dict[str, Any]],
    actors: tuple[str, ...] | None = None,
) -> tuple[dict[str, Any], Path]:
    from ipd_plugins.data.runs import load_run, load_trained
    from ipd_plugins.pipeline import Prepared, evaluate_actors
    from registry import get_registry

    components = {"adapter": adapter} if adapter else None
    with usage_errors():  # a bad adapter name or option fails before anything loads
        acting = parsed.get("policy", {})
        if acting:  # only acting options, checked against the run's policy before they apply
            others = {k: v for k, v in parsed.items() if k != "policy"}
            check_acting_options(load_run(run_dir, components, others)[0].configs["policy"], acting)
        cfg, _ = load_run(run_dir, components, parsed)
    adapter_obj = get_registry().create(
        "adapter", cfg.components["adapter"], cfg.configs["adapter"]
    )
    kinds = ("value", "policy", "world_model") if adapter_obj.uses_models else ("value", "policy")
    trained = load_trained(run_dir, kinds, echo=echo, components=components, overrides=parsed)
    cfg = trained.cfg
    if episodes is not None:
        cfg.run.eval_episodes = episodes
    out_file = "eval.json"
    if adapter or parsed or actors:
        parts: tuple[Any, ...] = () if actors is None else tuple(sorted(actors))
        if parsed.get("policy"):  # typed, so that 900 and 900.0 name one file
            parts += ({k: getattr(cfg.configs["policy"], k) for k in sorted(parsed["policy"])},)
        out_file = eval_file_name(cfg.components["adapter"], cfg.configs["adapter"], parts)
    p = Prepared(trained.dataset, trained.ctx, trained.dataset.content_hash())
    c = trained.components
    scores = evaluate_actors(
        cfg,
        p,
        c["policy"],
        c["value"],
        echo,
        world_model=c.get("world_model"),
        out_file=out_file,
        only=actors,
    )
    return scores, cfg.run_dir / out_file


def _eval_baseline(
    run_dir: Path, episodes: int | None, adapter: str | None, parsed: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], Path]:
    from ipd_plugins.baselines.run import (
        adapt_baseline_actor,
        load_trained_baseline,
        resolve_adaptation,
        resolve_settings,
    )
    from ipd_plugins.evaluate import score
    from ipd_plugins.files import write_json
    from ipd_plugins.run_config import load_config_file
    from ipd_plugins.stages import StageCache
    from registry import get_registry

    parsed = dict(parsed)
    acting = parsed.pop("baseline", {})
    if acting:  # checked against the run's algorithm, values too, before anything loads
        file = load_config_file(run_dir / "config.yaml")
        algo = file["baseline"].get("algo")
        with usage_errors():
            check_acting_options(get_registry().config_class("baseline", algo), acting)
            resolve_settings(algo, None, {"baseline": acting}, file)
    trained = load_trained_baseline(run_dir)
    settings, p, baseline = trained.settings, trained.prepared, trained.baseline
    if episodes is not None:
        settings.eval_episodes = episodes
    with usage_errors():
        adaptation = resolve_adaptation(settings, parsed, trained.file, adapter)
        if acting:
            baseline = baseline.acting_as(**acting)
    acted = {k: getattr(baseline.config, k) for k in sorted(acting)}  # typed: 1800 is 1800.0
    actor = baseline.actor()
    out_file = "eval.json"
    if adaptation is not None:
        cache = StageCache(settings.out_dir, echo)
        actor = adapt_baseline_actor(adaptation, p, cache, baseline, actor, echo)
    if adapter or parsed or acting:
        name = adaptation.components["adapter"] if adaptation is not None else "none"
        parts: tuple[Any, ...] = ()
        if adaptation is not None:
            parts += (adaptation.hash_part("world_model"),)
        if acted:
            parts += (acted,)
        config = adaptation.configs["adapter"] if adaptation is not None else {}
        out_file = eval_file_name(name, config, parts)
    n, env_id = settings.eval_episodes, p.ctx.env_id
    assert env_id is not None
    echo(f"[evaluate] {n} episodes of {env_id}")
    result = score(actor, env_id, n, settings.seed, p.dataset).to_dict()
    if acted:
        result["acting"] = acted
    report = getattr(actor, "report", None)
    if report is not None:
        result["adaptation"] = report()
    scores = {"policy": result}
    write_json(run_dir / out_file, scores)
    return scores, run_dir / out_file
