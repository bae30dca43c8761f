"""Config values checked against their domains: one table of the keys mmengine, mmdet and mmseg
read, matched by pattern over the whole merged config.

mmengine divides by, counts with or seeds from these values only when a run reaches them: a
``val_interval=0`` or a ``RandomFlip`` ``prob=1.5`` was a traceback minutes in, a logger
``interval=-1`` or a ``num_workers`` of -2 a silently wrong run. ``check_config_values`` (called
by ``load_config``, so by every tool) walks the config once and raises one ``ConfigError`` line
naming the key as ``--cfg-options`` spells it (list indices included), the value and the range.

Patterns are dotted keys: ``*`` is one key or list index (inside a key, any characters: ``*_
dataloader``), ``**`` any number of them (none included), ``(a|b)`` one of the names. The first
row that matches a key decides its domain, so specific rows come before general ones. ``None``
is refused unless a row's domain accepts it (``| UNSET``).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from numbers import Real as _Real

from mmengine.config import Config

from ..errors import ConfigError


class Domain:
    """A set of values that knows how to say what it holds."""

    def __contains__(self, value: object) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        """What the domain holds, after 'expected' ('an integer >= 1')."""
        raise NotImplementedError

    def __or__(self, other: Domain) -> Domain:
        return Either(self, other)


def _is_number(value: object) -> bool:
    return isinstance(value, _Real) and not isinstance(value, bool)


def _bound(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f'in {"(" if lo_open else "["}{lo}, {hi}{")" if hi_open else "]"}'
    if lo is not None:
        return f'{">" if lo_open else ">="} {lo}'
    return f'{"<" if hi_open else "<="} {hi}' if hi is not None else ''


@dataclass(frozen=True)
class Int(Domain):
    """An integer (not a bool, not 2.0) in ``[lo, hi]``."""

    lo: int | None = None
    hi: int | None = None

    def __contains__(self, value: object) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)
                and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi))

    def describe(self) -> str:
        return f'an integer {_bound(self.lo, self.hi, False, False)}'.rstrip()


@dataclass(frozen=True)
class Real(Domain):
    """A finite number (an int or a float, not a bool) between ``lo`` and ``hi``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    float_only: bool = False  # mmcv's RandomFlip refuses prob=1, Resize scale_factor=2

    def __contains__(self, value: object) -> bool:
        if not _is_number(value) or not math.isfinite(value) or (
                self.float_only and not isinstance(value, float)):
            return False
        return ((self.lo is None or (value > self.lo if self.lo_open else value >= self.lo))
                and (self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)))

    def describe(self) -> str:
        kind = 'a float (1.0, not 1)' if self.float_only else 'a finite number'
        return f'{kind} {_bound(self.lo, self.hi, self.lo_open, self.hi_open)}'.rstrip()


@dataclass(frozen=True)
class Exactly(Domain):
    """One value with a meaning of its own (``-1``: no limit; ``None``: unset)."""

    value: object
    meaning: str

    def __contains__(self, value: object) -> bool:
        return value is self.value if self.value is None else (
            type(value) is type(self.value) and value == self.value)

    def describe(self) -> str:
        return f'{self.value!r} ({self.meaning})'


@dataclass(frozen=True)
class Either(Domain):
    first: Domain
    second: Domain

    def __contains__(self, value: object) -> bool:
        return value in self.first or value in self.second

    def describe(self) -> str:
        return f'{self.first.describe()}, or {self.second.describe()}'


@dataclass(frozen=True)
class Items(Domain):
    """A list or tuple of ``item`` values: ``length`` of them (one of the lengths of a tuple; any
    number, at least one, when None), in increasing order with ``ordered``, summing to at most
    ``max_sum``; a tuple only with ``tuple_only`` (mmseg's ``RandomCrop`` takes no list)."""

    item: Domain
    length: int | tuple[int, ...] | None = None
    ordered: bool = False
    max_sum: float | None = None
    tuple_only: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, tuple if self.tuple_only else (list, tuple)) or not value:
            return False
        if self.length is not None and len(value) not in _lengths(self.length):
            return False
        if not all(v in self.item for v in value):
            return False
        if self.ordered and any(a > b for a, b in zip(value, value[1:])):
            return False
        return self.max_sum is None or sum(value) <= self.max_sum

    def describe(self) -> str:
        counts = '' if self.length is None else ' or '.join(map(str, _lengths(self.length))) + ' '
        head = 'a pair of values' if self.length == 2 else f'a list of {counts}values'
        rules = [' (a tuple)' if self.tuple_only else '',
                 ' in increasing order' if self.ordered else '',
                 f' summing to at most {self.max_sum:g}' if self.max_sum is not None else '']
        return f'{head}{"".join(rules)}, each {self.item.describe()}'


def _lengths(length: int | tuple[int, ...]) -> tuple[int, ...]:
    return length if isinstance(length, tuple) else (length,)


@dataclass(frozen=True)
class Sizes(Domain):
    """A size or scale of a transform: ``item`` values, or a (nested) list of them
    (``(2048, 512)``, ``[(1333, 640), (1333, 800)]``)."""

    item: Domain

    def __contains__(self, value: object) -> bool:
        if isinstance(value, (list, tuple)):
            return bool(value) and all(v in self for v in value)
        return value in self.item

    def describe(self) -> str:
        return f'{self.item.describe()}, or a list (or list of lists) of them'


@dataclass(frozen=True)
class ExistingFile(Domain):
    """A path to an existing file, or a URL (read when the run starts)."""

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and ('://' in value or os.path.isfile(value))

    def describe(self) -> str:
        return 'an existing file or a URL'


UNSET = Exactly(None, 'unset')
NO_LIMIT = Exactly(-1, 'no limit')
POSITIVE_INT = Int(1)
COUNT = Int(0)
POSITIVE = Real(0, lo_open=True)
NON_NEGATIVE = Real(0)
PROBABILITY = Real(0, 1)
FRACTION = Real(0, 1, hi_open=True)
_FLOAT_PROBABILITY = Real(0, 1, float_only=True)
_POSITIVE_FLOAT = Real(0, lo_open=True, float_only=True)
PROBABILITIES = _FLOAT_PROBABILITY | Items(_FLOAT_PROBABILITY, max_sum=1)

_PIPELINE = '**.(pipeline|*_pipeline|transforms).**.'
_TEST_CFG = 'model.**.test_cfg.**.'
_TRAIN_CFG = 'model.**.train_cfg.**.'


@dataclass(frozen=True)
class Row:
    pattern: str
    domain: Domain
    means: str


ROWS: tuple[Row, ...] = (
    # data loading
    Row('*_dataloader.batch_size', POSITIVE_INT, 'samples per batch'),
    Row('*_dataloader.num_workers', COUNT, 'DataLoader worker processes; 0 loads in the main '
        'process'),
    Row('*_dataloader.prefetch_factor', POSITIVE_INT | UNSET, 'batches loaded ahead per worker'),
    Row('**.filter_cfg.min_size', NON_NEGATIVE, 'the smallest image side kept, in pixels'),
    Row('auto_scale_lr.base_batch_size', POSITIVE_INT, 'the total batch size lr was set for'),
    # schedule
    Row('train_cfg.(max_iters|max_epochs)', POSITIVE_INT, 'the length of training'),
    Row('train_cfg.val_interval', POSITIVE_INT, 'validation every N iterations or epochs'),
    Row('train_cfg.val_begin', COUNT, 'the first iteration or epoch validated'),
    Row('default_hooks.checkpoint.interval', POSITIVE_INT | NO_LIMIT,
        'a checkpoint every N iterations or epochs; -1 saves only at the end'),
    Row('default_hooks.checkpoint.max_keep_ckpts', POSITIVE_INT | NO_LIMIT,
        'periodic checkpoints kept; -1 keeps all'),
    Row('(default_hooks|custom_hooks).*.interval', POSITIVE_INT, 'the hook acts every N '
        'iterations; 0 or less would silently never act'),
    Row('log_processor.window_size', POSITIVE_INT, 'iterations averaged in a logged value'),
    Row('param_scheduler.**.(begin|end)', COUNT, 'the iteration or epoch a scheduler starts or '
        'stops at'),
    Row('param_scheduler.**.(T_max|step_size|total_steps)', POSITIVE_INT | UNSET,
        'a scheduler period in iterations or epochs'),
    Row('param_scheduler.**.milestones', Items(COUNT), 'iterations or epochs where lr drops'),
    Row('param_scheduler.**.(factor|start_factor|end_factor)', PROBABILITY,
        'a multiple of the base lr, as mmengine allows'),
    Row('param_scheduler.**.gamma', POSITIVE, 'the lr multiple at each step'),
    Row('param_scheduler.**.(eta_min|power)', NON_NEGATIVE | UNSET, 'the lr floor or the decay '
        'exponent'),
    Row('param_scheduler.**.eta_min_ratio', PROBABILITY | UNSET, 'the lr floor as a multiple'),
    Row('param_scheduler.**.pct_start', PROBABILITY, 'the part of the cycle spent increasing'),
    # optimizer
    Row('optim_wrapper.optimizer.lr', POSITIVE, 'the learning rate'),
    Row('optim_wrapper.optimizer.weight_decay', NON_NEGATIVE, 'the weight decay'),
    Row('optim_wrapper.optimizer.momentum', PROBABILITY, 'the momentum'),
    Row('optim_wrapper.optimizer.dampening', PROBABILITY, 'the momentum dampening'),
    Row('optim_wrapper.optimizer.betas', Items(FRACTION, 2), 'the Adam running-average factors'),
    Row('optim_wrapper.optimizer.eps', POSITIVE, 'the term that keeps a division finite'),
    Row('optim_wrapper.paramwise_cfg.decay_rate', Real(0, 1, lo_open=True),
        'the lr multiple per layer or stage down the backbone'),
    Row('optim_wrapper.paramwise_cfg.**.*_mult', NON_NEGATIVE,
        'a multiple of the lr or the weight decay'),
    Row('optim_wrapper.accumulative_counts', POSITIVE_INT, 'iterations whose gradients are '
        'summed before a step'),
    Row('optim_wrapper.clip_grad.max_norm', POSITIVE, 'the largest gradient norm kept'),
    Row('optim_wrapper.clip_grad.norm_type', POSITIVE | Exactly(math.inf, 'the largest '
        'value'), 'the p of the gradient norm'),
    # pipelines (datasets, and the *_pipeline variables they are made of)
    Row(_PIPELINE + 'prob', PROBABILITIES, 'the chance a transform applies'),
    Row(_PIPELINE + '(scale|scales|img_scale|size)', Sizes(POSITIVE_INT) | UNSET,
        'an image size in pixels; unset where a scale_factor or size_divisor gives it'),
    Row(_PIPELINE + 'crop_size', POSITIVE_INT | Items(POSITIVE, 2, tuple_only=True),
        'a crop size, in pixels or relative'),
    Row(_PIPELINE + 'scale_factor', _POSITIVE_FLOAT | Items(_POSITIVE_FLOAT, 2) | UNSET,
        'a resize factor; unset where a scale gives the size'),
    Row(_PIPELINE + 'ratio_range', Items(POSITIVE, 2, ordered=True) | UNSET,
        'the (low, high) range of a random rescale'),
    Row(_PIPELINE + '(size_divisor|pad_size_divisor)', POSITIVE_INT | UNSET,
        'sizes are padded to a multiple of it'),
    Row(_PIPELINE + 'cat_max_ratio', Real(0, 1, lo_open=True), 'the largest share of one class '
        'in a crop'),
    # model
    Row('model.backbone.drop_path_rate', FRACTION, 'the stochastic-depth rate of the last block'),
    Row('model.backbone.layer_scale_init_value', NON_NEGATIVE, 'the initial layer scale'),
    Row('model.**.(dropout_ratio|drop_rate)', FRACTION, 'the dropout probability'),
    Row('model.**.num_classes', Int(1, 100_000), 'the classes a head predicts'),
    Row('model.**.loss_weight', NON_NEGATIVE, 'the weight of a loss'),
    Row('model.**.data_preprocessor.(size_divisor|pad_size_divisor)', POSITIVE_INT | UNSET,
        'batches are padded to a multiple of it'),
    Row('model.**.data_preprocessor.size', Items(POSITIVE_INT, 2) | UNSET, 'the padded input '
        'size'),
    Row('model.**.data_preprocessor.std', Items(POSITIVE, (1, 3)), 'per-channel divisors'),
    Row('model.**.data_preprocessor.mean', Items(Real(), (1, 3)), 'per-channel means'),
    Row(_TEST_CFG + '(crop_size|stride)', Items(POSITIVE_INT, 2), 'the sliding window of '
        'test_cfg mode slide'),
    Row(_TEST_CFG + '(score_thr|iou_threshold|mask_thr_binary)', PROBABILITY,
        'a score or overlap threshold'),
    Row(_TEST_CFG + 'max_per_img', POSITIVE_INT, 'detections kept per image'),
    Row(_TEST_CFG + 'nms_pre', POSITIVE_INT | NO_LIMIT, 'boxes kept before NMS; -1 keeps all'),
    Row(_TEST_CFG + 'min_bbox_size', NON_NEGATIVE, 'the smallest box kept, in pixels'),
    Row(_TRAIN_CFG + '(pos_iou_thr|min_pos_iou|pos_fraction|iou_threshold)', PROBABILITY,
        'an overlap threshold or a share of positives'),
    Row(_TRAIN_CFG + 'neg_iou_thr', PROBABILITY | Items(PROBABILITY, 2, ordered=True),
        'the overlap below which an anchor is negative'),
    Row(_TRAIN_CFG + 'ignore_iof_thr', PROBABILITY | NO_LIMIT,
        'the overlap with an ignored box that ignores an anchor; -1: none'),
    Row(_TRAIN_CFG + '(num|mask_size|max_per_img)', POSITIVE_INT, 'samples, mask side or boxes '
        'per image'),
    Row(_TRAIN_CFG + 'nms_pre', POSITIVE_INT | NO_LIMIT, 'boxes kept before NMS; -1 keeps all'),
    # run
    Row('randomness.seed', Int(0, 2**32 - 1) | UNSET, 'the random seed (numpy takes 32 bits)'),
    Row('env_cfg.mp_cfg.opencv_num_threads', COUNT, "OpenCV's threads; 0 is one"),
    Row('load_from', ExistingFile() | UNSET, 'weights to start training from'),
)


@dataclass(frozen=True)
class Order:
    """Two keys of one dict where ``low`` must be below ``high``."""

    pattern: str
    low: str
    high: str
    means: str


ORDERS: tuple[Order, ...] = (
    Order('param_scheduler.**', 'begin', 'end', 'a scheduler ends after it begins'),
)


@dataclass(frozen=True)
class AnyOf:
    """Keys of one dict of ``type`` of which at least one must be set (not None)."""

    pattern: str
    type: str
    keys: tuple[str, ...]
    means: str


ANY_OF: tuple[AnyOf, ...] = (
    AnyOf(_PIPELINE[:-1], 'Resize', ('scale', 'scale_factor'),
          'a Resize takes its size from one of them'),
)


def _compile(pattern: str) -> re.Pattern:
    """A regex matching ``'.' + key`` for a dotted pattern."""
    return re.compile(''.join(r'(?:\.[^.]+)*' if segment == '**' else
                              r'\.' + segment.replace('*', '[^.]*')
                              for segment in pattern.split('.')) + '$')


def matches(pattern: str, key: str) -> bool:
    """Whether a dotted ``pattern`` of the table matches ``key``."""
    return bool(_compile(pattern).match('.' + key))


_COMPILED = [(_compile(row.pattern), row) for row in ROWS]
_COMPILED_ORDERS = [(_compile(order.pattern), order) for order in ORDERS]
_COMPILED_ANY_OF = [(_compile(rule.pattern), rule) for rule in ANY_OF]


def walk(node: object, prefix: str = '') -> Iterator[tuple[str, object]]:
    """``(key, value)`` of every dict entry and list item under ``node``, parents first, keys
    as ``--cfg-options`` spells them (``train_dataloader.dataset.pipeline.2.prob``)."""
    if isinstance(node, Mapping):
        entries = node.items()
    elif isinstance(node, (list, tuple)):
        entries = enumerate(node)
    else:
        return
    for name, value in entries:
        key = f'{prefix}.{name}' if prefix else str(name)
        yield key, value
        yield from walk(value, key)


def row_of(key: str) -> Row | None:
    """The first row of ``ROWS`` whose pattern matches ``key``."""
    return next((row for pattern, row in _COMPILED if pattern.match('.' + key)), None)


def check_config_values(cfg: Config | Mapping) -> None:
    """Raise ``ConfigError`` (one line) for the first value outside its row's domain, then for
    the first ``ORDERS`` pair out of order or ``ANY_OF`` group left unset."""
    tree = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    dicts = []
    for key, value in walk(tree):
        row = row_of(key)
        if row is not None and value not in row.domain:
            raise ConfigError(f'config error: {key}={_short(value)}: expected '
                              f'{row.domain.describe()} ({row.means})')
        if isinstance(value, Mapping):
            dicts.append((key, value))
    for key, node in dicts:
        for pattern, order in _COMPILED_ORDERS:
            low, high = node.get(order.low), node.get(order.high)
            if pattern.match('.' + key) and _is_number(low) and _is_number(high) and low >= high:
                raise ConfigError(f'config error: {key}.{order.low}={low}: expected less than '
                                  f'{key}.{order.high}={high} ({order.means})')
        for pattern, rule in _COMPILED_ANY_OF:
            if (pattern.match('.' + key) and node.get('type') == rule.type
                    and all(node.get(k) is None for k in rule.keys)):
                raise ConfigError(f'config error: {" and ".join(f"{key}.{k}" for k in rule.keys)}'
                                  f' are all unset: give one ({rule.means})')


def _short(value: object) -> str:
    """``repr(value)``, a long list or dict cut (a string, a path, is shown whole)."""
    text = repr(value)
    return text if isinstance(value, str) or len(text) <= 60 else text[:57] + '...'
