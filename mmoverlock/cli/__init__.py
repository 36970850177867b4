"""What mmoverlock's command-line tools (``tools/``) share, not imported by ``import mmoverlock``: ``device``
(a GPU recipe adapted to the machine, the launcher's processes), ``options`` (``--eval`` / ``--out`` /
``--show-dir`` / ``--tta``), ``checks`` (the pre-run checks), ``errors`` (one-line errors), ``interruption``
(the line a stopped run ends with) and ``quiet_warnings`` (third-party warnings no user can act on, silenced
before mmengine is imported). The config rewrites the library uses too live in :mod:`mmoverlock.utils.config`."""
