# Mask R-CNN + FPN + InceptionNeXt-S on COCO, 1x schedule (12 epochs, steps at 8 and 11), single with the T recipe.
_base_ = ['./mask-rcnn_inceptionnext-t_fpn_1x_coco.py']
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_small.pth'  # noqa
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]))
