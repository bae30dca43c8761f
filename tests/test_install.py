"""Installing the package beside a user's stack replaces none of it (pip's own report)."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def test_pip_install_replaces_nothing(tmp_path):
    """``pip install -e .[mmdet,mmseg]`` into the environment running the tests (the lock's stack
    under make test, the older one under make test-compat) would install only this package."""
    report = tmp_path / 'report.json'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index', '--no-build-isolation',
         '--disable-pip-version-check', '--report', str(report), '-e', f'{ROOT}[mmdet,mmseg]'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    installs = [item['metadata']['name'] for item in json.loads(report.read_text())['install']]
    assert installs == ['inceptionnext-dense']
