"""Run configs: every option checked before training, files read safely, hashes kept stable."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ipd_plugins.commands import main
from ipd_plugins.pipeline import stage_keys
from ipd_plugins.run_config import (
    changed_options,
    load_config_file,
    parse_overrides,
    resolve_config,
)

ROOT = Path(__file__).resolve().parents[1]


def _resolve(*pairs: str):
    return resolve_config(overrides=parse_overrides(list(pairs)))


@pytest.mark.parametrize(
    "pair, words",
    [
        ("policy.token_layout=vas", ["token_layout", "'vsa'"]),
        ("policy.n_head=3", ["n_embd=64", "divisible", "n_head=3"]),
        ("policy.context=0", ["context must be >= 1"]),
        ("policy.dropout=2", ["dropout must be in [0, 1)"]),
        ("policy.n_steps=-5", ["n_steps must be >= 1"]),
        ("value.n_steps=0", ["n_steps must be >= 1"]),
        ("world_model.n_steps=0", ["n_steps must be >= 1"]),
        ("planner.n_mpc=abc", ["planner.n_mpc", "expected an integer", "'abc'"]),
        ("uncertainty.percentile=0", ["percentile must be in (0, 100]"]),
        ("augment.max_episodes=0", ["max_episodes must be >= 1"]),
        ("run.threads=0", ["threads must be >= 1"]),
        ("run.eval_episodes=0", ["eval_episodes must be >= 1"]),
        ("run.profile=fast", ["unknown profile 'fast'", "quick"]),
        ("value.tau=1.5", ["tau", "(0, 1)"]),
    ],
)
def test_a_bad_value_of_any_section_fails_when_resolved(pair, words):
    with pytest.raises(ValueError) as err:
        _resolve(pair)
    for word in words:
        assert word in str(err.value), (pair, str(err.value))


def test_a_bad_option_fails_before_anything_is_made(tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        main, ["run", "--set", "policy.token_layout=vas", "--out", str(out), "--seeds", "0,1"]
    )
    assert result.exit_code == 2 and "token_layout" in result.output
    assert not out.exists()  # no dataset made, no stage trained, no folder written


@pytest.mark.parametrize(
    "text, words",
    [
        ("run: [1, 2\n", ["not valid YAML"]),
        ("run: 3\n", ["section 'run' must be a mapping"]),
        ("- a\n- b\n", ["expected a mapping of sections"]),
        ("run: !!python/object/apply:os.system ['echo pwned']\n", ["refusing a YAML tag"]),
        ("nonsense:\n  a: 1\n", ["unknown section(s) nonsense"]),
    ],
)
def test_config_files_fail_with_a_sentence(tmp_path, text, words):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        resolve_config(file=load_config_file(path))
    for word in words:
        assert word in str(err.value)


def test_moved_option_is_read_from_its_old_place_and_hashed_as_before():
    new = _resolve("uncertainty.calibration_pairs=1234")
    old = _resolve("augment.calibration_pairs=1234")
    assert old.configs["uncertainty"].calibration_pairs == 1234
    assert old.run_name == new.run_name
    assert "calibration_pairs" not in old.hashed_sections()["uncertainty"]
    assert old.hashed_sections()["augment"]["calibration_pairs"] == 1234
    assert stage_keys(old, "d", "e") == stage_keys(new, "d", "e")
    assert _resolve().run_name != new.run_name


def test_recorded_run_folders_keep_their_names():
    """The score table's configs replay to the folders they were written to.

    The eight exceptions were recorded before a later default change and were already named
    otherwise before the package was reorganised (checked against commit e463c30).
    """
    from ipd_plugins.baselines.run import baseline_run_name, resolve_settings

    kept, renamed_before = 0, 0
    for path in sorted((ROOT / "benchmarks/results/scores_runs").glob("*/seed_*/config.yaml")):
        file = load_config_file(path)
        if "baseline" in file:
            settings, config = resolve_settings(file["baseline"]["algo"], None, {}, file)
            name = baseline_run_name(settings, config)
        else:
            name = resolve_config(file=file).run_name
        if name == path.parents[1].name:
            kept += 1
        else:
            renamed_before += 1
    assert (kept, renamed_before) == (64, 8)


def test_stage_keys_of_the_profiles_are_the_ones_runs_were_cached_under(monkeypatch):
    """Keys computed by the code at commit e463c30 (before the reorganisation), for a data hash
    'DH' and env 'E': an upgrade must not orphan anyone's stage cache (fp32 runs: on a chip
    without native bf16, ``run.precision: auto`` is fp32)."""
    from ipd_plugins import hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": False)
    # quick/default augment and policy keys changed on purpose with issue 27's profile options
    # (augment.max_share, policy.few_episodes); their value and world-model keys did not.
    # default's value, augment and policy keys changed on purpose with issue 21's re-balance
    # (value.tau_target 0.02, policy.n_steps 8k); its world-model key did not
    expected = {
        "quick": ("8bfd55a228e29930", "f6cc56e08f177032", "d4f0112460ee6c84", "1044cf5c776b5e1f"),
        "default": ("e393cd71546d92f9", "94e4c83ec2ae1357", "a9b42fb797c9d438", "f31f8a16a5658d1d"),
        "paper": ("d7ba225f24db2be1", "326c822a21b4b39c", "1184f2501927917f", "dc94fddd92012dd1"),
    }
    for profile, keys in expected.items():
        cfg = resolve_config(run={"profile": profile})
        got = stage_keys(cfg, "DH", "E")
        assert (got["value"], got["world_model"], got["augment"], got["policy"]) == keys
        explicit = stage_keys(
            resolve_config(run={"profile": profile, "precision": "fp32"}), "DH", "E"
        )
        assert explicit == got


def test_bf16_runs_get_their_own_stage_keys_and_auto_follows_the_hardware(monkeypatch):
    from ipd_plugins import hardware

    fp32 = stage_keys(resolve_config(run={"precision": "fp32"}), "DH", "E")
    bf16 = stage_keys(resolve_config(run={"precision": "bf16"}), "DH", "E")
    assert all(fp32[k] != bf16[k] for k in fp32)  # nothing trained in one is reused by the other
    for native, expected in ((True, bf16), (False, fp32)):
        monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu", n=native: n)
        assert stage_keys(resolve_config(), "DH", "E") == expected
    # the run folder's name does not change with the default
    assert resolve_config().run_name == resolve_config(run={"precision": "auto"}).run_name
    with pytest.raises(ValueError, match="run.precision must be one of auto, fp32, bf16"):
        resolve_config(run={"precision": "fp16"})


def test_changed_options_name_what_a_variant_sets_beyond_its_profile():
    assert changed_options(_resolve()) == []
    assert changed_options(_resolve("run.profile=default")) == []  # the profile's own values
    variant = _resolve("policy.alpha=0.5", "augment.n_aug=2", "run.eval_episodes=3")
    assert changed_options(variant) == ["policy.alpha=0.5", "augment.n_aug=2.0"]
    # an option back at its value from before it existed is labelled with that value
    as_written = _resolve("run.profile=default", "policy.few_episodes=0", "augment.max_share=none")
    assert changed_options(as_written) == ["policy.few_episodes=0", "augment.max_share=None"]


def test_a_recorded_config_replays_without_options_added_since(tmp_path):
    """A run folder's config.yaml from before ``augment.max_share``/``policy.few_episodes``
    existed replays with their old behaviour, not with what the profile now sets."""
    cfg = resolve_config(run={"profile": "default"})
    data = cfg.to_dict()
    for section, key in (
        ("augment", "max_share"),
        ("policy", "few_episodes"),
        ("run", "precision"),
    ):
        del data[section][key]
    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump({**data, "meta": {"ipd": "0.1"}}))
    replay = resolve_config(file=load_config_file(written))
    assert replay.augment.max_share is None and replay.configs["policy"].few_episodes == 0
    assert replay.run.precision == "fp32"
    # a hand-written file (no meta) still takes the profile's values
    written.write_text(yaml.safe_dump(data))
    fresh = resolve_config(file=load_config_file(written))
    assert fresh.augment.max_share == 0.1 and fresh.configs["policy"].few_episodes == 50


def test_a_profile_sub_section_configures_its_component_only(monkeypatch):
    from ipd_plugins import profiles

    custom = {"policy": {"n_steps": 111, "batch_size": 7, "gtp": {"batch_size": 33}}}
    monkeypatch.setitem(profiles.PROFILES, "custom", custom)
    gtp = resolve_config(
        run={"profile": "custom", "dataset": "pendulum-medium"}, components={"policy": "gtp"}
    )
    dt = resolve_config(run={"profile": "custom", "dataset": "pendulum-medium"})
    assert (gtp.configs["policy"].n_steps, gtp.configs["policy"].batch_size) == (111, 33)
    assert (dt.configs["policy"].n_steps, dt.configs["policy"].batch_size) == (111, 7)
    # --set still wins over the sub-section
    over = resolve_config(
        run={"profile": "custom", "dataset": "pendulum-medium"},
        components={"policy": "gtp"},
        overrides={"policy": {"batch_size": 5}},
    )
    assert over.configs["policy"].batch_size == 5
