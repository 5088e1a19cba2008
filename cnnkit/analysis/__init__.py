"""Graph analysis of any network: per-node shapes, parameters, MACs, activation memory, receptive field."""

from cnnkit.analysis.graph import analyze
from cnnkit.analysis.report import AnalysisReport, LayerRow

__all__ = ["AnalysisReport", "LayerRow", "analyze"]
