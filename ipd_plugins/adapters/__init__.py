"""Adapters: inference-time adaptation of a trained actor (``--adapter NAME``).

``none`` (the default) leaves the actor as trained; ``dwm`` is DWM-MPC (arXiv 2603.22430):
the actor's weights take gradient steps through the world model's imagined rollouts before
every action. The pure maths is in ``dwm_impl``.
"""
