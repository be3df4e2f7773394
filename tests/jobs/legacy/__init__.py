"""The batch-job code as it was before the one job framework (``samkit.jobs``), frozen for tests.

Verbatim copies of ``samkit/everything/job.py``, ``samkit/scale/{job,work,layout,local_engine}.py``
and ``samkit/annotation/job.py`` at commit eb0030f (imports made absolute), so that
tests/jobs/test_outputs_unchanged.py can check, on the machine that runs it, that the commands
built on ``samkit.jobs`` write byte for byte the files they wrote before. Test-only; delete this
package together with that test once nobody needs the comparison.
"""
