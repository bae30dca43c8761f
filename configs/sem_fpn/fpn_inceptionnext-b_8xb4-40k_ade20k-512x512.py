# Semantic FPN + InceptionNeXt-B on ADE20K (the T recipe).
_base_ = ['./fpn_inceptionnext-t_8xb4-40k_ade20k-512x512.py']
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_base.pth'  # noqa
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
