# Mask R-CNN + InceptionNeXt-T (the COCO 1x recipe) shrunk to what a 2-core CPU can train in minutes
# on the embedded demo set (`make demo-data`): data root, 128x128 images and batch 4, a short
# schedule (5 epochs of the demo set, gradient clipping as training starts from scratch), fewer
# RoIs per image, and SparseRoIAlign (mmcv's RoIAlign numbers, faster on a CPU); evaluation after
# every epoch (for the mAP curves; ValRandomStateHook keeps the training the same as with one
# evaluation at the end).
# Everything else (backbone, FPN, RPN and RoI heads, losses, optimizer, lr decay) is the real
# config.
_base_ = ['../mask_rcnn/mask-rcnn_inceptionnext-t_fpn_1x_coco.py']
data_root = 'data/demo/coco/'
max_epochs = 5
custom_imports = dict(
    imports=['backbones', 'backbones.ops.roi_align', 'backbones.runtime.hooks'],
    allow_failed_imports=False)
custom_hooks = [dict(type='ValRandomStateHook')]
roi_layer = dict(type='SparseRoIAlign', output_size=7, sampling_ratio=0)  # mmcv's, faster on CPU
model = dict(
    backbone=dict(init_cfg=None),  # no download here: from scratch unless tools/demo.py finds one
    roi_head=dict(bbox_roi_extractor=dict(roi_layer=roi_layer),
                  mask_roi_extractor=dict(roi_layer=dict(roi_layer, output_size=14))),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4, num_workers=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=1, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
optim_wrapper = dict(clip_grad=dict(_delete_=True, max_norm=10, norm_type=2))  # base: None
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[4],
         gamma=0.1)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)  # repeatable demo runs (upstream configs leave the seed random)
