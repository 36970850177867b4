"""The checkpoint allow-list (``safe_load``), imported with the package."""
