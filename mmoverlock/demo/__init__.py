"""The demo's synthetic data set (:mod:`.shapes_data`), not imported by ``import mmoverlock``."""
