"""Executing runs: ``unit.run_one`` (one picklable unit of work: a RunSpec and a results path in, records out),
``local`` (this machine's process pool), ``study.run_study`` (a whole study through an executor)."""

from suite.run.study import StudySummary, plan_study, preflight, reevaluate, run_study, study_dir_for
from suite.run.unit import RunResult, RunUnit, run_one

__all__ = ["RunResult", "RunUnit", "StudySummary", "plan_study", "preflight", "reevaluate", "run_one", "run_study",
           "study_dir_for"]
