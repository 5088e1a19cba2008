"""NumPy reference operations: convolution and pooling oracles equal to ``torch.nn.functional`` (no torch here).

``conv2d_forward_loop`` is the reference page's loop, kept as the teaching baseline; ``conv2d_forward`` is
the same formula vectorized (strided window view + one GEMM). Tests compare the torch layers to these.
"""

from cnnkit.reference.conv import (
    conv1x1,
    conv2d_forward,
    conv2d_forward_loop,
    depthwise_conv2d,
    depthwise_separable_conv2d,
)
from cnnkit.reference.pooling import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    global_avg_pool2d,
    max_pool2d,
)

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "conv1x1",
    "conv2d_forward",
    "conv2d_forward_loop",
    "depthwise_conv2d",
    "depthwise_separable_conv2d",
    "global_avg_pool2d",
    "max_pool2d",
]
