# InceptionNeXt-S: the recipe of mask-rcnn_inceptionnext-t_fpn_1x_coco.py
_base_ = ['./mask-rcnn_inceptionnext-t_fpn_1x_coco.py']
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_small.pth'  # noqa
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]))
