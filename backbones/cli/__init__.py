"""Command-line plumbing of ``tools/*.py``: checked configs, data checks, one-line errors."""
