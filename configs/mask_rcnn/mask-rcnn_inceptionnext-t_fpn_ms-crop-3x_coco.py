# Mask R-CNN + FPN + InceptionNeXt-T on COCO, 3x (36 epochs, steps at 27 and 33), multi-scale
# 480-800 + crop training from mmdet's ConvNeXt recipe; drop path 0.4. Batch 16 = 8 GPUs x 2.
_base_ = ['mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py']
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_tiny.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='InceptionNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    clip_grad=None,  # e.g. --cfg-options optim_wrapper.clip_grad.max_norm=1.0
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='InceptionNeXtLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise'))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
