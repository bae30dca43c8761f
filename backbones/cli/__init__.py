"""Command-line plumbing of ``tools/``: arguments spelt as upstream, one ``error:`` line and the
exit status for bad input and stops."""
