"""Run segment-everything or image embeddings over large image collections.

:func:`run_job` lists the images, skips those already done, runs the rest on an engine
(``"local"``: one model in this process; ``"ray"``: an actor pool of model replicas on a Ray
cluster, optional extra ``samkit[ray]``), writes one output file per image atomically and
finally a manifest. Ray is imported only when ``engine="ray"``.

``samkit everything`` keeps its own output layout (:func:`samkit.everything.job.run_everything`);
:func:`samkit.scale.everything_engine.ray_everything_engine` runs its per-image work on the same
Ray actor pool.
"""

from .job import ENGINES, JOB_KINDS, JobSummary, run_job

__all__ = ["ENGINES", "JOB_KINDS", "JobSummary", "run_job"]
