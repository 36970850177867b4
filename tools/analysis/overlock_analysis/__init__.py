"""The analysis behind ``tools/analysis``: complexity (params, FLOPs counted as the official release counts),
the model zoo's rows (read from ``configs/*/metafile.yml``) and the results tables. Not part of the runtime
package: scripts in ``tools/analysis`` import it as ``overlock_analysis`` (their folder is on ``sys.path``)."""
from .complexity import CONVENTIONS, ComplexityReport, analyze_complexity, deploy_  # noqa: F401

__all__ = ['CONVENTIONS', 'ComplexityReport', 'analyze_complexity', 'deploy_']
