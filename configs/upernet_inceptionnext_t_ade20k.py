# Entry point: UperNet + InceptionNeXt-T on ADE20K, the paper's setting.
# `python tools/train.py configs/upernet_inceptionnext_t_ade20k.py`
_base_ = ['./upernet/upernet_inceptionnext-t_8xb2-160k_ade20k-512x512.py']
