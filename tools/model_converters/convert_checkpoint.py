"""Convert checkpoints: ImageNet weights to a clean backbone file, or a trained model to a release.

The same command as ``python -m backbones.convert`` (installed with the package; see
``backbones/convert.py`` for the modes and flags)::

    python tools/model_converters/convert_checkpoint.py inceptionnext_tiny.pth \
        pretrain/inceptionnext_t.pth
    python tools/model_converters/convert_checkpoint.py work_dirs/x/iter_160000.pth \
        release/upernet_t.pth
"""
from backbones.convert import main

if __name__ == '__main__':
    main()
