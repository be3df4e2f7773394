"""Labelling workflows: detector boxes in, a mask data set out (``samkit annotate``).

:func:`annotate` reads detections (:mod:`.detections`), decodes every box of an image on one
embedding (:mod:`.boxes`), stores each image's result (:mod:`.job`) and writes COCO, YOLO-seg
and Label Studio files (:mod:`.outputs`).
"""

from .job import AnnotateSummary, annotate

__all__ = ["AnnotateSummary", "annotate"]
