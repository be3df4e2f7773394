"""One framework for every batch command (``samkit everything``, ``embed``, ``annotate``).

A command supplies its per-image work and its writer; the framework does the rest:

* :func:`collect_inputs` expands files, folders and globs into :class:`ImageTask` s
  (the rules of :mod:`samkit.inputs`);
* :func:`run_tasks` skips the images whose outputs are complete (:mod:`.markers`: one resume
  scheme), runs the rest on an :data:`Engine` and hands each :class:`ImageResult` to the
  command's writer in this process, the only one that writes (atomically, :mod:`samkit.io`),
  counting into one :class:`JobSummary` and showing progress;
* engines: :func:`local_engine` (this process) and :func:`ray_engine` (a pool of Ray actors,
  one model replica each, built from a picklable :class:`ImageWork`; placement rules in
  :mod:`.placement`). Both run the per-image function through :func:`run_one`, so a bad image
  fails the same way on either.
"""

from .local_engine import local_engine
from .markers import Markers
from .ray_engine import ray_engine
from .results import ImageResult, TaskFailed, run_one
from .runner import Engine, ResultWriter, run_tasks
from .summary import JobSummary
from .tasks import ImageTask, collect_inputs
from .work import ImageWork, build_model

__all__ = [
    "Engine",
    "ImageResult",
    "ImageTask",
    "ImageWork",
    "JobSummary",
    "Markers",
    "ResultWriter",
    "TaskFailed",
    "build_model",
    "collect_inputs",
    "local_engine",
    "ray_engine",
    "run_one",
    "run_tasks",
]
