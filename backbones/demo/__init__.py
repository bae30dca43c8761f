"""The synthetic datasets of ``make demo`` and the tests (no download needed)."""
