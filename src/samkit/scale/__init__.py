"""Image embeddings (or segment-everything records) for large image collections: one file per image.

:func:`run_job` lists the images, skips those already done, runs the rest on an engine of
:mod:`samkit.jobs` (``"local"``: one model in this process; ``"ray"``: an actor pool of model
replicas on a Ray cluster, optional extra ``samkit[ray]``), writes one output file per image
atomically and finally a manifest. Ray is imported only when ``engine="ray"``.
"""

from ..jobs import JobSummary
from .job import ENGINES, JOB_KINDS, run_job

__all__ = ["ENGINES", "JOB_KINDS", "JobSummary", "run_job"]
