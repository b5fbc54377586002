"""Override lists that make a full `ipd run` take seconds (the plumbing, not the score)."""

TINY_IPD = [
    "value.n_steps=150",
    "value.hidden=32",
    "value.checkpoint_every=50",
    "value.log_every=50",
    "world_model.n_steps=150",
    "world_model.hidden=32",
    "world_model.n_hidden=2",
    "world_model.eval_every=50",
    "world_model.checkpoint_every=50",
    "augment.n_aug=0.5",
    "uncertainty.calibration_pairs=1000",
    "policy.n_steps=40",
    "policy.n_layer=1",
    "policy.n_embd=32",
    "policy.n_head=2",
    "policy.context=5",
    "policy.batch_size=16",
    "policy.checkpoint_every=20",
    "policy.log_every=10",
    "policy.warmup_steps=10",
    "run.eval_episodes=2",
    "run.threads=1",
]

#: the Decision Transformer baseline's network and schedule at a size that trains in seconds
TINY_DT_BASELINE = [
    "baseline.n_layer=1",
    "baseline.n_embd=32",
    "baseline.n_head=2",
    "baseline.context=5",
    "baseline.batch_size=16",
    "baseline.warmup_steps=10",
]
