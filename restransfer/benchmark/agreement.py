"""Moved to :mod:`restransfer.evaluation.agreement` (export verification uses it too); this name keeps old
imports working."""

from ..evaluation.agreement import detection_agreement

__all__ = ["detection_agreement"]
