"""What mmoverlock's command-line tools (``tools/``) share, not imported by ``import mmoverlock``:
``runtime`` (config task, device adaptation, ``--eval`` mapping) and ``quiet_warnings`` (third-party warnings no
user can act on, silenced before mmengine is imported)."""
