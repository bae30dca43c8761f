# InceptionNeXt-S: the recipe of cascade-mask-rcnn_inceptionnext-t_fpn_ms-crop-3x_coco.py
_base_ = ['./cascade-mask-rcnn_inceptionnext-t_fpn_ms-crop-3x_coco.py']
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_small.pth'  # noqa
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.6,
                  init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]))
