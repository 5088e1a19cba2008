"""Task models and their losses, post-processing and metrics: classification, detection, segmentation."""
