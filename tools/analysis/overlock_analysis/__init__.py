"""The analysis behind ``tools/analysis``: complexity (params, FLOPs counted as the official release counts),
the model zoo's rows (read from ``configs/*/metafile.yml``), the results tables and the aggregation shapes of
the variants. Not part of the runtime package: scripts in ``tools/analysis`` import its modules
(``overlock_analysis.complexity``, ``.models``, ``.reference``, ``.results``, ``.shapes``) with their folder
on ``sys.path``; importing the package itself imports nothing else."""
