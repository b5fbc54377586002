"""``ipd sweep``: a grid of runs (datasets x methods x options x seeds) on Ray, each shared stage
computed once.

A *spec* (YAML or TOML; :func:`load_spec`) lists the grid::

    name: planner-grid          # the sweep's name (default: the spec file's stem)
    out: runs/grid              # run folders + the stage cache: a folder every worker sees
    record: results/grid_runs   # optional: each finished trial's config.yaml + results.json
    profile: default            # run.profile of every trial
    run: {threads: 1}           # RunSettings of every trial (default threads: num_cpus)
    resources: {num_cpus: 1, num_gpus: 0}    # per trial (a method may set its own)
    retries: 3                  # times a trial whose worker died is run again
    datasets: [hopper-medium, {dataset: data.hdf5, env_id: Hopper-v5}]
    seeds: [0, 1, 2]
    methods:                    # label -> method; the label is the `ipd compare` row
      ipd: {}                                           # the paper's components
      greedy: {components: {planner: greedy}}
      mpc: {set: [planner.n_mpc=8], grid: {augment.n_aug: [0.5, 1, 2]}}   # 3 trials per cell
      iql: {baseline: iql, set: {baseline.n_steps: 10000}}

Every (dataset, seed, method, grid point) is a *trial*: an ordinary ``ipd run`` or
``ipd baseline`` seed folder, resolved and checked when the spec is read (a trial whose options
are bad is reported and the others run). A trial whose folder already has ``results.json``
(under ``out``, or ``record``, or in a folder of another hash whose config replays to the same
run) is done: running a spec again runs only what is missing. The record keeps the first
result of each run: ``--reproduce`` trains again the trials that only the record has (their
folders were lost, or to check the record) and reports whether each got the record's scores
(:func:`~ipd_plugins.sweep.trials.finish_trial`).

Scheduling (:func:`run_sweep`): one Ray task per dataset loads (or makes) it and gives its
content hash; from it the stage-cache keys of every trial
(:func:`~ipd_plugins.pipeline.stage_keys`). A value function, world model or augmentation that
several pending trials share gets a task of its own; those trials depend on that task (Ray holds
them, no worker waits) and reuse its artifact, so a planner ablation over 3 seeds trains 3 value
functions. The stage cache's locks (:mod:`ipd_plugins.stages`) still guarantee that no two
processes write one stage, whatever runs beside the sweep. A task whose worker dies is run again
(``retries``) and resumes from its stage's checkpoints; a task that raises is not retried: its
trial is reported failed with the error, and the trials that do not need it go on. Ctrl-C
cancels every task (finished stages stay cached; the same command resumes).

The cache holds locks, so ``out`` must be on a filesystem every worker sees with working
``flock`` (a local disk for one machine; NFSv4, CephFS, Lustre mounted with flock, ... at the
same path on every node of a cluster), as must the datasets (``MINARI_DATASETS_PATH`` or the
files): a worker whose dataset differs from the one the sweep planned with fails saying so.

The executor ``serial`` runs the same trials one after another in this process, without Ray
(``ipd ablate`` uses it, as does ``ipd sweep --serial``). Each trial holds a claim on its run
folder while it runs, so two ``ipd sweep --serial`` of one spec (one per core, say) split its
trials: each skips the trial the other is running and runs the next one nobody runs
(:func:`~ipd_plugins.sweep.engine._run_serial`); trials that share a stage still wait for it.
A Ray task takes the same claim (waiting for it, a CPU of the cluster idle meanwhile), so a
trial another sweep on the same ``out`` finished is not run twice.

Modules: ``spec`` (the spec and its trials), ``trials`` (one trial: stage keys, running it,
its outcome), ``engine`` (:func:`describe`, the serial executor, :func:`run_sweep`),
``ray_driver`` (the Ray tasks and their driver, imported only when Ray is asked for).
"""

from ipd_plugins.sweep.engine import (
    describe,
    dry_run,
    estimate_seconds,
    run_sweep,
    run_trials,
)
from ipd_plugins.sweep.spec import (
    METHOD_KEYS,
    SPEC_KEYS,
    MethodSpec,
    SweepSpec,
    Trial,
    expand,
    find_finished,
    load_spec,
    parse_spec,
    select,
)
from ipd_plugins.sweep.trials import SweepResult, TrialOutcome, finish_trial, run_trial

__all__ = [
    "SPEC_KEYS",
    "METHOD_KEYS",
    "MethodSpec",
    "SweepSpec",
    "Trial",
    "TrialOutcome",
    "SweepResult",
    "load_spec",
    "parse_spec",
    "select",
    "expand",
    "find_finished",
    "describe",
    "estimate_seconds",
    "run_trial",
    "finish_trial",
    "run_trials",
    "dry_run",
    "run_sweep",
]
