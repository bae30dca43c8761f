"""Optional ops, imported by a config that wants them (``custom_imports``)."""
