"""What a wheelhouse must hold, from pip's installation report; used by scripts/wheelhouse.sh.

    python scripts/wheelhouse.py select REPORT --roots 'setuptools<82' ... [--exclude torch,...]
        [--target FREEZE] --out NEEDED.txt [--shims DIR]
    python scripts/wheelhouse.py installs REPORT   # names pip would install, one a line

``select`` walks the dependency graph of the resolved set from the requested packages and lists
(``name==version``) every package reached, stopping at the excluded ones (torch and torchvision:
the target keeps its own) and at packages the target already has in a version that every
requirer accepts, so that what only torch needs (its CUDA libraries) or what the target has is
not downloaded. A target with ``opencv-python-headless`` but not ``opencv-python`` gets a
metadata-only ``opencv-python`` wheel depending on the headless one (``--shims``): mmengine's
wheel declares ``opencv-python``, and installing it beside the headless one puts two packages
over the same ``cv2`` files.

Runs with any Python that has pip (``packaging`` is taken from pip if not installed).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import zipfile
from collections import deque
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare interpreter: pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

HEADLESS = {'opencv-python': 'opencv-python-headless'}


def parse_freeze(lines: list[str]) -> dict[str, str | None]:
    """``pip freeze`` / ``pip list --format=freeze`` lines as {name: version or None}.

    ``name @ url`` and bare names count as present in an unknown version that satisfies anything.
    """
    have: dict[str, str | None] = {}
    for raw in lines:
        line = raw.split('#', 1)[0].strip()
        if not line or line.startswith('-'):
            continue
        if '==' in line:
            name, version = line.split('==', 1)
            have[canonicalize_name(name.strip())] = version.split(';')[0].strip()
        else:
            have[canonicalize_name(line.split('@', 1)[0].split('[', 1)[0].strip())] = None
    return have


def _accepts(version: str | None, specs: list[SpecifierSet]) -> bool:
    if version is None:
        return True
    try:
        v = Version(version)
    except InvalidVersion:
        return False
    return all(s.contains(v, prereleases=True) for s in specs)


def _edges(item: dict, extras: set[str], env: dict) -> list[tuple[str, SpecifierSet, set[str]]]:
    """(name, specifier, extras) of what ``item`` requires with ``extras`` in ``env``."""
    out = []
    for text in item['metadata'].get('requires_dist') or []:
        req = Requirement(text)
        if req.marker is not None and not any(
                req.marker.evaluate({**env, 'extra': e}) for e in (extras or {''})):
            continue
        out.append((canonicalize_name(req.name), req.specifier, set(req.extras)))
    return out


def select(report: dict, roots: list[str], exclude: set[str],
           target: dict[str, str | None], keep: set[str] = frozenset()) -> dict:
    """What to download for a target: ``needed`` {name: version}, ``skipped`` (the target has
    them), ``excluded`` (reached but never downloaded), ``shims`` {name: (version, requires)},
    ``local`` (requested by path, e.g. the project: built, not downloaded). ``keep``: included
    even if the target has them (build tools, whose target version may be unknown)."""
    items = {canonicalize_name(i['metadata']['name']): i for i in report['install']}
    env = report['environment']
    exclude = {canonicalize_name(n) for n in exclude}
    starts: list[tuple[str, set[str]]] = []
    specs: dict[str, list[SpecifierSet]] = {}
    for text in roots:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        starts.append((name, set(req.extras)))
        specs.setdefault(name, []).append(req.specifier)
    named = {n for n, _ in starts}
    starts += [(n, set(i.get('requested_extras') or [])) for n, i in items.items()
               if i.get('requested') and n not in named]  # the project, given as a path

    def walk(stop: set[str]) -> dict[str, set[str]]:
        """Reached packages with the union of the extras asked of them."""
        seen: dict[str, set[str]] = {}
        queue = deque(starts)
        while queue:
            name, extras = queue.popleft()
            if name in seen and extras <= seen[name]:
                continue
            seen[name] = seen.get(name, set()) | extras
            if name in stop or name not in items:
                continue
            for dep, spec, dep_extras in _edges(items[name], seen[name], env):
                specs.setdefault(dep, []).append(spec)
                queue.append((dep, dep_extras))
        return seen

    everything = walk(exclude)
    missing = sorted(n for n in everything if n not in items and n not in exclude)
    if missing:
        raise SystemExit(f'error: the report lacks {", ".join(missing)}: resolve again')
    keep = {canonicalize_name(n) for n in keep}
    have = {n for n in everything if n in target and n not in keep | exclude
            and _accepts(target[n], specs.get(n, []))}
    reached = walk(exclude | have)
    needed, shims, local = {}, {}, []
    for name in reached:
        if name in exclude or name in have:
            continue
        if items[name].get('is_direct'):  # the project itself: built, not downloaded
            local.append(name)
            continue
        headless = HEADLESS.get(name)
        if headless in target and headless not in reached:  # its version, if known, labels it
            version = target[headless] or items[name]['metadata']['version']
            shims[name] = (version, f'{headless}=={version}' if target[headless] else headless)
            continue
        needed[name] = items[name]['metadata']['version']
    return dict(needed=needed, skipped=sorted(have & set(reached)),
                excluded=sorted(exclude & set(reached)), shims=shims, local=local)


def write_shim(folder: Path, name: str, version: str, requires: str) -> Path:
    """A wheel with metadata only: installing it installs ``requires`` and no files."""
    dist = f'{name.replace("-", "_")}-{version}'
    files = {
        f'{dist}.dist-info/METADATA': (
            f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n'
            f'Summary: stand-in made by scripts/wheelhouse.sh: cv2 comes from {requires}\n'
            f'Requires-Dist: {requires}\n'),
        f'{dist}.dist-info/WHEEL': ('Wheel-Version: 1.0\nGenerator: scripts/wheelhouse.py\n'
                                    'Root-Is-Purelib: true\nTag: py3-none-any\n'),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=')
        record.append(f'{path},sha256={digest.decode()},{len(text.encode())}')
    record.append(f'{dist}.dist-info/RECORD,,')
    files[f'{dist}.dist-info/RECORD'] = '\n'.join(record) + '\n'
    out = folder / f'{dist}-py3-none-any.whl'
    with zipfile.ZipFile(out, 'w') as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out


def mmcv_requires(path: Path) -> list[str]:
    """The runtime requirements of an mmcv wheel (its metadata) or sdist.

    An sdist's setup.py adds an OpenCV requirement only where no ``cv2`` is importable at build
    time; ``opencv-python>=3`` stands for it here (a target's headless OpenCV gets a stand-in).
    """
    if path.suffix == '.whl':
        with zipfile.ZipFile(path) as zf:
            meta = next(n for n in zf.namelist() if n.endswith('.dist-info/METADATA'))
            lines = zf.read(meta).decode().splitlines()
        return [ln.split(':', 1)[1].strip() for ln in lines if ln.startswith('Requires-Dist:')
                and 'extra ==' not in ln]
    import tarfile
    with tarfile.open(path) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith('/requirements/runtime.txt'))
        text = tf.extractfile(member).read().decode()
    reqs = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith('#')]
    return [*reqs, 'opencv-python>=3']


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    sel = sub.add_parser('select', help='what to download for a target')
    sel.add_argument('report')
    sel.add_argument('--roots', nargs='*', default=[], help='the named requirements given to pip')
    sel.add_argument('--exclude', default='torch,torchvision')
    sel.add_argument('--target', help='pip freeze of the target environment')
    sel.add_argument('--keep', default='', help='names included even if the target has them')
    sel.add_argument('--out', required=True, help='file for the name==version lines')
    sel.add_argument('--shims', help='folder for the stand-in wheels')
    inst = sub.add_parser('installs', help='names of the packages a report installs')
    inst.add_argument('report')
    req = sub.add_parser('requires', help="an mmcv wheel's or sdist's runtime requirements")
    req.add_argument('file')
    args = parser.parse_args(argv)
    if args.command == 'requires':
        print('\n'.join(mmcv_requires(Path(args.file))))
        return
    report = json.loads(Path(args.report).read_text())
    if args.command == 'installs':
        print('\n'.join(i['metadata']['name'] for i in report['install']))
        return
    target = parse_freeze(Path(args.target).read_text().splitlines()) if args.target else {}
    plan = select(report, args.roots, {n for n in args.exclude.split(',') if n}, target,
                  {n for n in args.keep.split(',') if n})
    Path(args.out).write_text(''.join(f'{n}=={v}\n' for n, v in sorted(plan['needed'].items())))
    for name, (version, requires) in plan['shims'].items():
        if not args.shims:
            raise SystemExit(f'error: {name} needs a stand-in wheel: give --shims DIR')
        write_shim(Path(args.shims), name, version, requires)
    print(f'[wheelhouse] {len(plan["needed"])} to download; target has: '
          f'{", ".join(plan["skipped"]) or "none of them"}; not included: '
          f'{", ".join(plan["excluded"]) or "nothing"}'
          + ''.join(f'; {n}: a stand-in for {r}' for n, (_, r) in plan['shims'].items()),
          file=sys.stderr)


if __name__ == '__main__':
    main()
