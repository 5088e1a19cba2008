"""Object detection: boxes and overlap measures, anchors, detectors, and COCO evaluation."""
