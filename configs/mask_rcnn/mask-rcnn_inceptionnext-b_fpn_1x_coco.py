# InceptionNeXt-B: the recipe of mask-rcnn_inceptionnext-t_fpn_1x_coco.py
_base_ = ['./mask-rcnn_inceptionnext-t_fpn_1x_coco.py']
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_base.pth'  # noqa
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4,
                  init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
