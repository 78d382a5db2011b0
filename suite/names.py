"""Names every layer of the pipe agrees on: record files, MLflow tags, shared constants.

One definition each, no torch: ``suite.config``, the report and the CLI's dry runs import this without the
training stack.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------- run records
# results/<study>/<run_id>/...
CONFIG = "config.yaml"  # the resolved RunConfig (with run id, study and axes)
STATUS = "status.json"  # running | done | failed, with reason and traceback
METRICS = "metrics.json"  # flat metrics and per-layer details
HISTORY = "history.csv"  # one row per epoch
MAPS = "maps.npz"  # a sample of active-token maps
EVALS = "evals"  # evals/<override>.json: evaluations with evaluation-time settings changed
CHECKPOINT = "checkpoint.pt"  # model, optimiser, scheduler, RNG: resumable after every epoch
LOCK = ".lock"  # claimed by the process training the run

# results/<study>/...
STUDY_FILE = "study.yaml"  # the validated study as run (the report reads it back, typed)
ENVIRONMENT = "environment.json"  # machine and versions of the latest invocation
RUNS_TABLE = "runs.csv"  # one row per run
EVALS_TABLE = "evals.csv"  # one row per run x evaluation override
REPORT_DIR = "report"  # figures and tables
STATS_TABLE = "stats.csv"  # report/: paired differences of every variant from its reference, one row per metric
HTML_PAGE = "report.html"
SEARCH_DIR = "search"  # search/<variant>/ with per_variant
TRIALS_TABLE = "trials.csv"
PARETO_TABLE = "pareto.csv"
OPTUNA_DB = "optuna.db"  # default search storage, per study

# results/...
MLFLOW_DB = "mlflow.db"  # default tracking store, one for all studies under a results directory
MLFLOW_ARTIFACTS = "mlartifacts"

# ---------------------------------------------------------------------------------------------- MLflow tags
RUN_TAG = "spikesuite.run_id"
STUDY_TAG = "spikesuite.study"
KIND_TAG = "spikesuite.kind"  # invocation | run | trial
INVOCATION = "invocation"
INVOCATION_TAG = "spikesuite.invocation"  # a run's invocation (not nested under it: the runs table lists runs flat)
HOST_TAG, PID_TAG = "spikesuite.host", "spikesuite.pid"  # of an invocation: found dead, it is closed as KILLED
SEARCH_TAG = "spikesuite.search"
ERROR_TAG = "spikesuite.error"  # why a run or trial failed
REPLACES_TAG = "spikesuite.replaces"  # the killed MLflow runs a rerun replaces

# ---------------------------------------------------------------------------------------------- energy
# Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm: 32-bit float multiply+add and add.
E_MAC_PJ = 4.6
E_AC_PJ = 0.9
ENERGY_KINDS: tuple[str, ...] = ("stem", "attention", "mlp", "head")  # the per-kind energy breakdown

# ---------------------------------------------------------------------------------------------- names in files
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # study, variant, experiment: no separators (directory names)

# ---------------------------------------------------------------------------------------------- energy conventions
# Lemaire et al., "An analytical estimation of spiking neural networks energy efficiency", ICONIP 2022
# (arXiv 2210.13107; LEAT-EDGE/qualia-plugin-snn EnergyEstimationMetric): one SRAM access to a memory holding
# `values` words of `bits` bits costs E_RAM_PJ_PER_BIT x values x bits + E_RAM_ACCESS_PJ picojoules.
E_RAM_PJ_PER_BIT = 1.09e-5
E_RAM_ACCESS_PJ = 13.2
WORD_BITS = 32  # weights, membrane potentials and real-valued activations: 32-bit floats (as E_MAC_PJ, E_AC_PJ)
SPIKE_BITS = 1
PRIMARY_ENERGY_CONVENTION = "exact"  # the convention of energy_exact_uj, the figures' default
