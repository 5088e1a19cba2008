"""Fast inference and export: conv-BatchNorm folding, channels_last, TorchScript and ONNX."""

from cnnkit.export.fuse import FoldPair, find_fold_pairs, fold_batchnorm, fuse

__all__ = ["FoldPair", "find_fold_pairs", "fold_batchnorm", "fuse"]
