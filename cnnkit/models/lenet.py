"""LeNet-5 (LeCun et al., 1998), built from the reference page's own arrow notation.

The page writes the network as :data:`PAGE_SPEC`; :func:`lenet5` passes that very string to
:func:`cnnkit.build`, so the zoo and the notation cannot disagree. With ReLU and max pooling (the page's
``Pool``) it has 61,706 parameters::

    conv1  1 -> 6, 5x5      6 * (1*25 + 1)  =    156     32x32 -> 28x28, pool -> 14x14
    conv2  6 -> 16, 5x5    16 * (6*25 + 1)  =  2,416     14x14 -> 10x10, pool -> 5x5
    fc1    400 -> 120                          48,120
    fc2    120 -> 84                           10,164
    fc3    84 -> 10                               850

:func:`lenet5_classic` uses tanh and average-pool subsampling, as in the paper. The paper's subsampling
layers also had a trainable coefficient and bias per map, and its C3 layer connected each map to only some
of S2's maps (60,000 parameters in all); like most re-implementations, both variants here use plain
average pooling and full connections, so they have the same 61,706 parameters.
"""

from __future__ import annotations

from cnnkit.errors import ConfigError
from cnnkit.models.registry import register_model
from cnnkit.models.spec import SpecNet, build

__all__ = ["PAGE_SPEC", "lenet5", "lenet5_classic"]

PAGE_SPEC = "Input(32x32) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(120) -> FC(84) -> FC(10)"

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
_CARD = dict(
    params=61_706,
    # conv + linear multiply-accumulates at 1x32x32:
    # 6*28*28*25 + 16*10*10*150 + 400*120 + 120*84 + 84*10
    macs=416_520,
    input_size=(1, 32, 32),
    min_input_size=(1, 32, 32),
    mean=MNIST_MEAN,
    std=MNIST_STD,
    num_classes=10,
    paper="LeCun et al., Gradient-based learning applied to document recognition, Proc. IEEE 1998",
    torchvision=None,
    weights=None,
    first_conv="conv1",
    classifier="fc3",
)


@register_model(**_CARD)
def lenet5(*, num_classes: int = 10, in_chans: int = 1, act: str = "relu", pool: str = "max") -> SpecNet:
    """LeNet-5 from the page's spec: two 5x5 convs with 2x2 pooling, then FC 120 -> 84 -> classes.

    Args:
        num_classes: outputs of the last layer (``0``: none, ``forward`` returns the 84 features).
        in_chans: input channels (1 for MNIST; 3 for colour images).
        act: activation after every conv and hidden FC: ``"relu"`` or ``"tanh"``.
        pool: ``"max"`` or ``"avg"`` 2x2 subsampling.

    Returns:
        A :class:`SpecNet` with modules ``conv1, act1, pool1, conv2, act2, pool2, flatten, fc1, act3, fc2,
        act4, fc3``.

    Shape:
        - Input: ``(N, in_chans, 32, 32)`` (the flattening fixes the size)
        - Output: ``(N, num_classes)``
    """
    if act not in ("relu", "tanh"):
        raise ConfigError(f"lenet5 act must be 'relu' or 'tanh', got {act!r}")
    return build(PAGE_SPEC, act=act, pool=pool, input_size=(in_chans, 32, 32), num_classes=num_classes)


@register_model(**_CARD)
def lenet5_classic(*, num_classes: int = 10, in_chans: int = 1) -> SpecNet:
    """LeNet-5 as in the paper's spirit: tanh activations and average-pool subsampling.

    Args:
        num_classes: outputs of the last layer.
        in_chans: input channels.

    Returns:
        A :class:`SpecNet` with the same modules and parameter count as :func:`lenet5`.

    Shape:
        - Input: ``(N, in_chans, 32, 32)``
        - Output: ``(N, num_classes)``
    """
    return lenet5(num_classes=num_classes, in_chans=in_chans, act="tanh", pool="avg")
