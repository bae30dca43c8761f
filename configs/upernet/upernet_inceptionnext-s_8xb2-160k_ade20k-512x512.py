# UperNet + InceptionNeXt-S on ADE20K (the T recipe; drop path 0.3 as in the paper).
_base_ = ['./upernet_inceptionnext-t_8xb2-160k_ade20k-512x512.py']
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_small.pth'  # noqa
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)))
