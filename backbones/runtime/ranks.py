"""One reduction shared by the ranks of a distributed run, so that all of them take a decision
(stop, fail) at the same point."""
from __future__ import annotations

import torch
from mmengine.dist import all_reduce, get_world_size


def max_over_ranks(*values: int) -> list[int]:
    """``values`` reduced with max over the ranks of a distributed run (all ranks must call)."""
    if get_world_size() == 1:
        return list(values)
    flags = torch.tensor(values, dtype=torch.int64)
    all_reduce(flags, op='max')
    return flags.tolist()
