"""Print the fully resolved config (bases merged, ``--cfg-options`` applied and checked).

    python tools/analysis_tools/print_config.py configs/upernet_inceptionnext_t_ade20k.py \
        [--cfg-options ...]
"""
from __future__ import annotations

import argparse

from backbones.cli.main import add_cfg_options, one_line_errors
from backbones.config import load_config


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description='Print the whole config')
    parser.add_argument('config', help='config file path')
    add_cfg_options(parser)
    args = parser.parse_args()
    print(load_config(args.config, args.cfg_options).pretty_text)


if __name__ == '__main__':
    main()
