"""What the tools apply to mmengine/mmcv/torch for a run: device adaptation, launchers, CPU AMP,
the pre-run sequence, the hooks and the console. Nothing here acts on import except registering
its classes; every patch of a live mmengine/mmcv object is in ``patches``."""
