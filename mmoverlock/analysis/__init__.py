"""The analysis behind ``tools/analysis``: complexity (params, FLOPs counted as the official release counts:
``complexity``), the models measured (``models``), the model zoo's reference rows (``reference``, read from
``configs/*/metafile.yml``), the results tables (``results``), the aggregation shapes of the variants (``shapes``),
effective receptive fields (``erf``) and the GPU check's rows (``gpu_check``, run by
``tools/analysis/gpu_check.py``). Not imported by ``import mmoverlock``; importing this package imports
nothing else."""
