"""Pre-run checks: what the tools check of a config, its data and its outputs before anything
runs or is written (``overrides``, ``model``, ``constructors``, ``data``, ``outputs``), and the
opt-in per-sample checks of the data pipelines (``transforms``)."""
