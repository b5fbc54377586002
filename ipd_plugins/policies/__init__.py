"""Sequence policies (paper sec. 3.4): ``ipd-dt`` (V(s)-conditioned, eq. 26) and ``dt`` (RTG)."""

from ipd_plugins.policies.dt import DtConfig, DtPolicy
from ipd_plugins.policies.ipd_dt import IpdDtConfig, IpdDtPolicy

__all__ = ["IpdDtConfig", "IpdDtPolicy", "DtConfig", "DtPolicy"]
