"""Policies: the sequence policies of the paper (sec. 3.4), ``ipd-dt`` (V(s)-conditioned, eq. 26)
and ``dt`` (RTG), and ``gtp`` (Generative Trajectory Policies: state only, no context window)."""

from ipd_plugins.policies.dt import DtConfig, DtPolicy
from ipd_plugins.policies.gtp import GtpConfig, GtpPolicy
from ipd_plugins.policies.ipd_dt import IpdDtConfig, IpdDtPolicy

__all__ = ["IpdDtConfig", "IpdDtPolicy", "DtConfig", "DtPolicy", "GtpConfig", "GtpPolicy"]
