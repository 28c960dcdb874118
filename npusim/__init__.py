"""npusim: a bit-accurate integer NPU simulator and co-design framework.

Importing this package stays lean: it does not import torch (the simulator reads
IntegerProgram files, never trained PyTorch objects).
"""

__version__ = "0.1.0"

from npusim.jitcache import configure as _configure_jit_cache

_configure_jit_cache()
