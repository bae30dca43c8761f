"""The package's layers go one way: a module imports only from its own layer or lower ones, in
the order docs/architecture.md gives. Lazy imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'backbones'
# bottom to top; a module's layer is that of its first path part under backbones/
LAYERS = [('errors', 'files'), ('safe_load', 'checkpoint'),
          ('inception_next', 'layer_decay', 'ops'), ('checks',), ('config',), ('deploy',),
          ('runtime',), ('demo',), ('cli', 'convert')]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}
ROOT_INIT_LAYER = LAYER_OF['inception_next']  # `import backbones`: the model and what it needs


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer(module: str) -> int:
    parts = module.split('.')
    if parts == ['backbones']:
        return ROOT_INIT_LAYER
    if parts[1] not in LAYER_OF:
        raise AssertionError(f'{module}: backbones.{parts[1]} has no layer; add it to LAYERS '
                             'here and to docs/architecture.md')
    return LAYER_OF[parts[1]]


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every ``backbones`` import in ``source``."""
    package = module if is_package else module.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                depth = len(package.split('.'))
                assert node.level <= depth, f'{module}:{node.lineno} imports beyond the package'
                base = package.split('.')[:depth - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            # `from . import x` and `from backbones import x` may name submodules
            found += [(node.lineno, f'{target}.{a.name}') if not node.module or target ==
                      'backbones' else (node.lineno, target) for a in node.names]
    return [(line, name) for line, name in found
            if name == 'backbones' or name.startswith('backbones.')]


def upward_imports(source: str, module: str, is_package: bool) -> list[str]:
    own = layer(module)
    return [f'{module}:{line} imports {name} (layer {layer(name)} > {own})'
            for line, name in imported_modules(source, module, is_package)
            if name != 'backbones' and layer(_existing(name)) > own]


def _existing(name: str) -> str:
    """``name`` without a trailing attribute (``backbones.x.y.CONSTANT``)."""
    parts = name.split('.')
    while len(parts) > 2 and not ((ROOT / Path(*parts)).with_suffix('.py').exists()
                                  or (ROOT / Path(*parts)).is_dir()):
        parts.pop()
    return '.'.join(parts)


MODULES = sorted(PACKAGE.rglob('*.py'))


@pytest.mark.parametrize('path', MODULES, ids=[module_name(p) for p in MODULES])
def test_no_import_from_a_higher_layer(path: Path):
    assert upward_imports(path.read_text(), module_name(path), path.name == '__init__.py') == []


def test_every_package_folder_has_a_layer():
    folders = {p.relative_to(PACKAGE).parts[0] for p in MODULES if p.parent != PACKAGE}
    modules = {p.stem for p in MODULES if p.parent == PACKAGE and p.stem != '__init__'}
    assert folders | modules == set(LAYER_OF)


@pytest.mark.parametrize('source, module', [
    ('from ..runtime.hooks import SafeRunHook', 'backbones.checks.data'),
    ('from backbones.deploy.fuse import fuse_inception_next', 'backbones.inception_next'),
    ('def f():\n    from .deploy import fuse', 'backbones.checkpoint'),
    ('from .. import cli', 'backbones.runtime.adapt'),
])
def test_an_upward_import_is_found(source: str, module: str):
    assert upward_imports(source, module, is_package=False)


def test_a_relative_import_beyond_the_package_is_found():
    with pytest.raises(AssertionError, match='beyond the package'):
        upward_imports('from ..errors import DiskFullError', 'backbones.files', is_package=False)


def test_the_model_file_imports_nothing_from_deploy():
    source = (PACKAGE / 'inception_next.py').read_text()
    names = [n for _, n in imported_modules(source, 'backbones.inception_next', False)]
    assert names and not [n for n in names if n.startswith('backbones.deploy')]
