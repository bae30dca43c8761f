"""Shared fixtures: small checkpoints made from timm's InceptionNeXt with random weights."""
from __future__ import annotations

import functools
import http.server
import os
import threading

import pytest
import torch
from helpers import (
    FAMILIES,
    SEG_TAIL,
    create_timm_inception_next,
    forget_mmengine_instances,
    randomize_bn_and_layer_scale_,
    write_config,
)

from backbones.demo.data import make_ade20k, make_coco


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs 2 workers) each worker takes its share of the
    cores it may use, and so do the tools it starts, instead of all of them each."""
    workers = getattr(config, 'workerinput', {}).get('workercount', 1)
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        threads = max(1, min(torch.get_num_threads(), (cores or 1) // workers))
        torch.set_num_threads(threads)
        os.environ['OMP_NUM_THREADS'] = str(threads)


# The files of whole-minute end-to-end runs, longest first: `make test` gives each worker whole
# files in collection order, so a long file collected last would leave the other worker idle.
LONG_FILES_FIRST = ('test_bad_input.py', 'test_upstream_tools.py', 'test_demo.py',
                    'test_faults.py', 'test_benchmark.py', 'test_runner_e2e.py',
                    'test_export.py', 'test_export_detector.py', 'test_distributed.py',
                    'test_onnx_detector_runtime.py', 'test_guest.py', 'test_property_config.py',
                    'test_property_files.py', 'test_failures.py')


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept inside


def pytest_addoption(parser):
    parser.addoption('--device', default='cuda',
                     help='device of tests/test_cuda.py (default cuda: they skip without it)')


@pytest.fixture(autouse=True)
def fresh_mmengine_instances():
    """Forget the loggers, message hubs and visualizers of earlier in-process runs."""
    yield
    forget_mmengine_instances()


@pytest.fixture(scope='session')
def timm_atto() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn_and_layer_scale_(create_timm_inception_next('atto')).eval()


@pytest.fixture(scope='session')
def atto_ckpt(tmp_path_factory, timm_atto) -> str:
    """The official release format: a flat state dict with the ImageNet head."""
    path = tmp_path_factory.mktemp('ckpt') / 'inceptionnext_atto.pth'
    torch.save(timm_atto.state_dict(), path)
    return str(path)


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """Demo-format ADE20K and COCO sets of 4 + 2 images of 64x64."""
    root = tmp_path_factory.mktemp('data')
    make_ade20k(str(root / 'ade'), n_train=4, n_val=2, size=64)
    make_coco(str(root / 'coco'), n_train=4, n_val=2, size=64)
    return dict(seg=str(root / 'ade' / 'ADEChallengeData2016'), det=str(root / 'coco'))


@pytest.fixture()
def seg_cfg(tmp_path, tiny_data) -> str:
    """An atto UperNet config of 2 iterations on ``tiny_data``."""
    return write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                        iters=2)


@pytest.fixture()
def http_dir(tmp_path, monkeypatch):
    """A folder served over HTTP on localhost, and an empty torch hub cache."""
    folder = tmp_path / 'served'
    folder.mkdir()
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    for var in ('no_proxy', 'NO_PROXY'):  # a machine's proxy must not take localhost requests
        monkeypatch.setenv(var, '127.0.0.1,localhost')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f'http://127.0.0.1:{server.server_port}'
    server.shutdown()
