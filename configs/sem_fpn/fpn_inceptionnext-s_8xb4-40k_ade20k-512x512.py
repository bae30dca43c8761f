# Semantic FPN + InceptionNeXt-S on ADE20K (the T recipe).
_base_ = ['./fpn_inceptionnext-t_8xb4-40k_ade20k-512x512.py']
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_small.pth'  # noqa
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]))
