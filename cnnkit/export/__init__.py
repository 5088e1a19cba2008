"""Fast inference and export: conv-BatchNorm folding, channels_last, TorchScript and ONNX."""

from cnnkit.analysis.fuse import FoldPair, find_fold_pairs, fold_batchnorm, fuse
from cnnkit.export.blocks import FoldedConvNeXtBlock, inference_blocks
from cnnkit.export.formats import (
    RELATIVE_TOLERANCE,
    check_export,
    check_exportable,
    export_onnx,
    export_run,
    export_torchscript,
    onnx_for_run,
    read_onnx_metadata,
    run_exported,
)
from cnnkit.export.optimize import (
    InferenceModel,
    best_call_times,
    flatten_graph,
    measure_channels_last,
    optimize_for_inference,
)

__all__ = [
    "RELATIVE_TOLERANCE",
    "FoldPair",
    "FoldedConvNeXtBlock",
    "InferenceModel",
    "export_onnx",
    "export_torchscript",
    "find_fold_pairs",
    "flatten_graph",
    "fold_batchnorm",
    "fuse",
    "inference_blocks",
    "best_call_times",
    "check_export",
    "check_exportable",
    "export_run",
    "onnx_for_run",
    "read_onnx_metadata",
    "measure_channels_last",
    "optimize_for_inference",
    "run_exported",
]
