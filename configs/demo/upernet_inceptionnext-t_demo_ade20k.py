# The entry experiment (UperNet + InceptionNeXt-T, ADE20K recipe) shrunk to what a 2-core CPU can
# train in minutes on the embedded demo set (`make demo-data`): data root, crop 128 and batch 4,
# a short schedule (300 iters, higher peak lr from scratch), evaluation every 50 iterations (for the
# mIoU curve; ValRandomStateHook keeps the training the same as with one evaluation at the end), a
# 128-wide head.
# Everything else (backbone, heads, losses, optimizer, lr decay, augmentations) is the real config.
_base_ = ['../upernet_inceptionnext_t_ade20k.py']
custom_imports = dict(imports=['backbones', 'backbones.runtime.hooks'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='ValRandomStateHook')]
data_root = 'data/demo/ade/ADEChallengeData2016'
crop_size = (128, 128)
max_iters = 300
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),  # no download here: from scratch unless tools/demo.py finds one
    decode_head=dict(channels=128),
    auxiliary_head=dict(channels=64),
    test_cfg=dict(mode='whole'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4, num_workers=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=1, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', power=1.0, begin=30, end=max_iters, eta_min=0.0, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=50)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)  # repeatable demo runs (upstream configs leave the seed random)
