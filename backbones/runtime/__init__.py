"""What the tools apply to mmengine/mmcv/torch for a run: device adaptation, launchers, CPU AMP,
safety hooks and atomic files. Nothing here acts on import except registering its classes."""
