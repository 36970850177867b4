"""The analysis behind ``tools/analysis``: complexity (params, FLOPs counted as the official release counts:
``complexity``), the models measured (``models``), the model zoo's reference rows (``reference``, read from
``configs/*/metafile.yml``), the results tables (``results``), the aggregation shapes of the variants (``shapes``)
and effective receptive fields (``erf``). Not imported by ``import mmoverlock``; importing this package imports
nothing else."""
