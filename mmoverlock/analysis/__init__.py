"""Complexity analysis (params, FLOPs) and the official results tables of OverLoCK."""
from .complexity import (CONVENTIONS, ComplexityReport, analyze_complexity, deploy_,  # noqa: F401
                         flop_counting_mode)

__all__ = ['CONVENTIONS', 'ComplexityReport', 'analyze_complexity', 'deploy_', 'flop_counting_mode']
