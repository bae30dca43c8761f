"""scripts/wheelhouse.py: what a wheelhouse holds for a target, from a made-up pip report.

The round trip itself (download, install with no index, tests) needs an index and about 6 GB:
it is `make wheelhouse-check`, not a test.
"""
from __future__ import annotations

import io
import json
import runpy
import subprocess
import sys
import tarfile

import pytest
from helpers import ROOT

ENV = dict(sys_platform='linux', platform_system='Linux', platform_machine='x86_64',
           python_version='3.11', python_full_version='3.11.7', implementation_name='cpython',
           os_name='posix', platform_release='', platform_version='',
           platform_python_implementation='CPython')


def _item(name: str, version: str, *requires: str, **extra) -> dict:
    return dict(metadata=dict(name=name, version=version, requires_dist=list(requires)), **extra)


REPORT = dict(environment=ENV, install=[
    _item('inceptionnext-dense', '0.1.0', 'torch>=2.1', 'timm>=0.9.7', 'mmengine>=0.10',
          'mmdet>=3.3; extra == "mmdet"', 'pytest; extra == "dev"',
          requested=True, requested_extras=['mmdet'], is_direct=True),
    _item('torch', '2.14.1', 'nvidia-cublas==13.1.1.3; platform_system == "Linux"', 'filelock',
          'sympy>=1.13.3'),
    _item('nvidia-cublas', '13.1.1.3'), _item('sympy', '1.14.0'), _item('filelock', '4.3.1'),
    _item('timm', '1.0.31', 'torch', 'torchvision', 'huggingface_hub'),
    _item('torchvision', '0.29.1', 'torch==2.14.1', 'numpy'),
    _item('huggingface-hub', '2.4.0', 'filelock', 'fsspec>=2023.5.0'),
    _item('fsspec', '2026.9.0'),
    _item('mmdet', '3.3.0', 'numpy', 'scipy'),
    _item('scipy', '1.17.1', 'numpy>=1.25.2'), _item('numpy', '2.4.6'),
    _item('mmengine', '0.10.7', 'numpy', 'opencv-python>=3', 'regex; sys_platform == "win32"'),
    _item('opencv-python', '5.0.0.93', 'numpy>=2'),
    _item('setuptools', '81.0.0', requested=True),
    _item('pytest', '9.2.0', requested=False),
])
ROOTS = ['setuptools<82', 'mmengine>=0.3.0', 'regex; sys_platform == "win32"']


@pytest.fixture(scope='module')
def wh() -> dict:
    return runpy.run_path(str(ROOT / 'scripts' / 'wheelhouse.py'), run_name='wheelhouse')


def test_torch_and_what_only_torch_needs_are_left_out(wh):
    plan = wh['select'](REPORT, ROOTS, {'torch', 'torchvision'}, {})
    assert set(plan['needed']) == {'timm', 'huggingface-hub', 'filelock', 'fsspec', 'mmdet',
                                   'scipy', 'numpy', 'mmengine', 'opencv-python', 'setuptools'}
    assert plan['needed']['numpy'] == '2.4.6'
    assert plan['excluded'] == ['torch', 'torchvision']  # nvidia-cublas and sympy: not reached
    assert plan['local'] == ['inceptionnext-dense'] and plan['skipped'] == []


def test_with_torch_everything_is_included(wh):
    plan = wh['select'](REPORT, ROOTS, set(), {})
    assert {'torch', 'torchvision', 'nvidia-cublas', 'sympy'} <= set(plan['needed'])


def test_target_packages_are_skipped_only_in_accepted_versions(wh):
    target = wh['parse_freeze'](['# pip freeze', 'numpy==1.24.0', 'setuptools==83.0.0',
                                 'fsspec==2025.1.0', 'filelock @ file:///wheels/filelock.whl',
                                 'opencv-python-headless==4.12.0.88', '-e git+https://x#egg=y'])
    assert target['filelock'] is None and target['numpy'] == '1.24.0'
    plan = wh['select'](REPORT, ROOTS, {'torch', 'torchvision'}, target)
    assert plan['skipped'] == ['filelock', 'fsspec']
    assert {'numpy', 'setuptools'} <= set(plan['needed'])  # scipy needs >= 1.25.2; root < 82
    assert 'opencv-python' not in plan['needed']
    assert plan['shims'] == {'opencv-python': ('4.12.0.88', 'opencv-python-headless==4.12.0.88')}
    kept = wh['select'](REPORT, ROOTS, {'torch', 'torchvision'}, {'setuptools': None},
                        keep={'setuptools'})
    assert 'setuptools' in kept['needed'] and kept['skipped'] == []
    unknown = wh['select'](REPORT, ROOTS, {'torch'}, {'opencv-python-headless': None,
                                                       'torch': '2.11.0'})
    assert unknown['shims'] == {'opencv-python': ('5.0.0.93', 'opencv-python-headless')}
    assert unknown['skipped'] == [] and unknown['excluded'] == ['torch']


def test_shim_wheel_installs_as_its_requirement(wh, tmp_path):
    wh['write_shim'](tmp_path, 'opencv-python', '4.12.0.88', 'opencv-python-headless==4.12.0.88')
    report = tmp_path / 'report.json'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index', '--no-deps',
         '--ignore-installed', '--find-links', str(tmp_path), '--report', str(report),
         'opencv-python>=3'], capture_output=True, text=True, timeout=120,
        env={'PIP_CONFIG_FILE': '/dev/null', 'PATH': '/usr/bin:/bin'})
    assert result.returncode == 0, result.stderr[-2000:]
    (item,) = json.loads(report.read_text())['install']
    assert item['metadata']['version'] == '4.12.0.88'
    assert item['metadata']['requires_dist'] == ['opencv-python-headless==4.12.0.88']


def test_mmcv_requirements_from_the_sdist(wh, tmp_path):
    sdist = tmp_path / 'mmcv-2.1.0.tar.gz'
    with tarfile.open(sdist, 'w:gz') as tf:
        data = b'addict\nmmengine>=0.3.0\n# comment\nregex;sys_platform=="win32"\n'
        info = tarfile.TarInfo('mmcv-2.1.0/requirements/runtime.txt')
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert wh['mmcv_requires'](sdist) == ['addict', 'mmengine>=0.3.0',
                                          'regex;sys_platform=="win32"', 'opencv-python>=3']


def test_a_report_missing_a_requirement_is_an_error(wh):
    report = dict(environment=ENV, install=[_item('mmdet', '3.3.0', 'numpy')])
    with pytest.raises(SystemExit, match='lacks numpy'):
        wh['select'](report, ['mmdet'], set(), {})
