# UperNet + InceptionNeXt-B on ADE20K (the T recipe; drop path 0.4 as in the paper).
_base_ = ['./upernet_inceptionnext-t_8xb2-160k_ade20k-512x512.py']
checkpoint_file = 'https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_base.pth'  # noqa
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4,
                  init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
