"""``spikesuite`` / ``python -m suite``: run, plan, evaluate, report, ui (and search, worker, status, cancel, bench).

Exit codes: 0 success, 1 some runs failed, 2 bad input (nothing written)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from suite.config import Study, StudyError, load_study

log = logging.getLogger("spikesuite")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("mlflow", "alembic", "optuna", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `spikesuite plan STUDY | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikesuite", description=__doc__)
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    def cmd(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("--results", type=Path, default=Path("results"), help="records directory (default results/)")
        return sp

    r = cmd("run", _run, "train and evaluate every run of a study (finished runs are skipped)")
    r.add_argument("study", type=Path)
    r.add_argument("--workers", type=int, default=None, help="processes sharing the study (default: execution.workers)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: execution.device)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--no-report", action="store_true")
    r.add_argument("--parallel-config", type=Path, default=None, metavar="CLUSTER_YML",
                   help="run through the cluster file's backend (local pool or submitit job arrays; docs/cluster.md)")
    r.add_argument("--no-wait", action="store_true",
                   help="with --parallel-config: submit and return (watch with spikesuite status STUDY)")
    r.add_argument("--nproc-per-run", type=int, default=None, metavar="N",
                   help="torch.distributed ranks per run (overrides resources.nproc_per_run)")

    st = cmd("status", _status, "each run's state from the records, with the job holding it and that job's state")
    st.add_argument("study", type=Path)

    ca = cmd("cancel", _cancel, "cancel the study's pending and running jobs (runs and search workers)")
    ca.add_argument("study", type=Path)

    pl = cmd("plan", _plan, "dry run: list the expanded runs, their ids and status")
    pl.add_argument("study", type=Path)

    e = cmd("evaluate", _evaluate, "re-evaluate a trained run with evaluation-time settings changed")
    e.add_argument("study", type=Path)
    e.add_argument("run_id")
    e.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. tokens.halting.beta_offset=-2 (value parsed as YAML)")
    e.add_argument("--name", default=None, help="name of the recorded evaluation (default from --set)")

    rep = cmd("report", _report, "figures and tables from a study's records")
    rep.add_argument("target", help="a study file or a results/<study> directory")

    searches = (
        ("search", _search, "Optuna search over the study's search: block (resumes; n_trials is the study's total)",
         "sqlite:///PATH (default results/<study>/optuna.db), journal:PATH, postgresql://...",
         "total trials the study should hold (default: search.n_trials)"),
        ("worker", _worker, "one of several processes running a search together on a shared storage",
         "journal:PATH (one machine) or postgresql://... (several); default search.storage",
         "total trials for all workers together (default: search.n_trials)"),
    )
    for name, func, help_text, storage_help, trials_help in searches:
        se = cmd(name, func, help_text)
        se.add_argument("study", type=Path)
        se.add_argument("--storage", default=None, metavar="URL", help=storage_help)
        se.add_argument("--n-trials", type=int, default=None, help=trials_help)
        se.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: execution.device)")
        se.add_argument("--no-progress", action="store_true")
        if name == "search":
            se.add_argument("--parallel-config", type=Path, default=None, metavar="CLUSTER_YML",
                            help="submit --workers search workers through the cluster file's backend")
            se.add_argument("--workers", type=int, default=None, metavar="N",
                            help="with --parallel-config: workers to submit (default 1)")
            se.add_argument("--no-wait", action="store_true", help="with --parallel-config: submit and return")

    u = cmd("ui", _ui, "start the MLflow UI over the suite's tracking store")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--uri", default=None, help="tracking URI (default: sqlite store under --results)")

    b = sub.add_parser("bench", help="wall-clock ratios: training step vs spikingjelly, compacted inference, "
                       "study end to end", description=_bench.__doc__)
    b.set_defaults(func=_bench)
    b.add_argument("--out", type=Path, default=Path("results/bench"), help="output directory (default results/bench)")
    b.add_argument("--quick", action="store_true", help="tiny shapes and a tiny study (checks that it runs)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda (bf16 autocast)")
    b.add_argument("--parts", default="1,2,3", help="comma-separated subset of 1,2,3 (default all)")
    b.add_argument("--no-profile", action="store_true", help="do not profile the cases whose target is missed")
    return p


def _load(path: Path) -> Study:
    return load_study(path)


def _run(args) -> int:
    from suite.run import run_study

    study = _load(args.study)
    if args.nproc_per_run is not None and args.nproc_per_run < 1:
        raise StudyError("--nproc-per-run", [f"must be >= 1 (got {args.nproc_per_run})"])
    cluster = None
    if args.parallel_config is not None:
        from suite.run.cluster_file import load_cluster, merged_resources, resource_problems

        cluster = load_cluster(args.parallel_config)
        if cluster.backend == "local":  # today's local pool (a run on several ranks spawns them here)
            if args.no_wait:
                raise StudyError("--no-wait", ["backend: local runs the study in this process: nothing to submit"])
            res = merged_resources(cluster, study, args.nproc_per_run)
            if problems := resource_problems(cluster, res):
                raise StudyError(str(args.parallel_config), problems)
            args.nproc_per_run = res.nproc_per_run
            cluster = None
    elif args.no_wait:
        raise StudyError("--no-wait", ["needs --parallel-config CLUSTER_YML (docs/cluster.md)"])
    if cluster is not None:
        return _run_cluster(args, study, cluster)
    summary = run_study(study, args.results, source=str(args.study), workers=args.workers,
                        progress=not args.no_progress and sys.stderr.isatty(), device=args.device,
                        nproc_per_run=args.nproc_per_run)
    return _finish_run(args, study, summary)


def _finish_run(args, study: Study, summary) -> int:
    if not args.no_report:
        _report_dir(summary.study_dir)
    n = len(summary.done) + len(summary.skipped) + len(summary.failed) + len(summary.busy)
    print(f"{study.name}: {n} runs: {len(summary.done)} run now, {len(summary.skipped)} already done, "
          f"{len(summary.busy)} run by another process, {len(summary.failed)} failed "
          f"({summary.wall_time_s:.1f} s). Records: {summary.study_dir}")
    if summary.failed:
        print("failed runs (rerun the same command to retry them):", file=sys.stderr)
        for rid, reason in summary.failed.items():
            print(f"  {rid}: {reason}", file=sys.stderr)
        return 1
    return 0


def _run_cluster(args, study: Study, cluster) -> int:
    from suite.run.cluster import submit_study

    run = submit_study(study, cluster, args.results, source=str(args.study), nproc_per_run=args.nproc_per_run,
                       device=args.device, wait=not args.no_wait, out=lambda line: print(line, flush=True))
    if run.summary is not None:
        return _finish_run(args, study, run.summary)
    print(f"{study.name}: {len(run.submitted)} runs submitted ({run.cluster}), {len(run.already_done)} already "
          f"done, {len(run.held)} held by live jobs. Records: {run.study_dir}")
    print(f"watch: spikesuite status {args.study}; stop: spikesuite cancel {args.study}; once they have ended, "
          f"the same run command collects the tables and the report (it submits nothing that is done or running)")
    return 0


def _status(args) -> int:
    from suite.run.cluster import status_rows

    study = _load(args.study)
    sdir, rows, workers = status_rows(study, args.results, source=str(args.study))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    print(f"{study.name}: {len(rows)} runs -> {sdir} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")
    print(f"{'run id':<13} {'state':<8} {'variant':<16} {'seed':>4} {'attempts':>8}  {'job':<14} job state")
    for row in rows:
        print(f"{row.spec.run_id:<13} {row.state:<8} {row.spec.variant:<16} {row.spec.config.seed:>4} "
              f"{row.attempts if row.attempts is not None else '-':>8}  {row.job_id or '-':<14} {row.job_state or '-'}")
    for w in workers:
        print(f"search worker {w.get('index', '?')}: job {w['job_id']} {w['state']} ({w['cluster']})")
    if any(r.state == "stopped" for r in rows):
        print("stopped: its job ended mid-run; the next submission resumes it from its last epoch checkpoint")
    return 0


def _cancel(args) -> int:
    from suite.run.cluster import cancel_study

    study = _load(args.study)
    cancelled = cancel_study(study, args.results, source=str(args.study))
    for what, job_id, state in cancelled:
        print(f"cancelled job {job_id} ({what}, was {state})")
    if not cancelled:
        print(f"{study.name}: no pending or running job to cancel")
    return 0


def _plan(args) -> int:
    from suite.run import plan_study

    study = _load(args.study)
    sdir, planned = plan_study(study, args.results, source=str(args.study))
    print(f"{study.name}: {len(planned)} runs -> {sdir}")
    print(f"{'run id':<13} {'status':<8} {'variant':<16} {'starts from':<25} axes")
    for spec, state in planned:
        axes = {k: v for k, v in spec.axes.items() if k != "variant"}
        start = f"weights of {spec.trained_by}" if spec.trained_by else f"fine-tunes {spec.parent}" if spec.parent \
            else "scratch"
        print(f"{spec.run_id:<13} {state:<8} {spec.variant:<16} {start:<25} {json.dumps(axes)}")
    return 0


def _evaluate(args) -> int:
    import yaml

    from suite.run import reevaluate

    updates = {}
    for item in args.sets:
        if "=" not in item:
            raise StudyError("--set", [f"{item!r}: expected KEY=VALUE"])
        key, value = item.split("=", 1)
        updates[key] = yaml.safe_load(value)
    metrics, path = reevaluate(_load(args.study), args.run_id, updates, args.results, name=args.name,
                               source=str(args.study))
    keys = ("accuracy", "token_pct", "timesteps_mean", "energy_exact_uj")
    print(json.dumps({k: round(metrics[k], 4) for k in keys if k in metrics}))
    print(f"recorded: {path}")
    return 0


def _report_dir(study_dir: Path) -> list[Path]:
    from suite.report import build_report

    paths = build_report(study_dir)
    for p in paths:
        print(f"wrote {p}")
    return paths


def _report(args) -> int:
    target = Path(args.target)
    if target.is_dir():
        study_dir = target
    else:
        from suite.run import study_dir_for

        study_dir = study_dir_for(args.results, _load(target).name)
    try:
        _report_dir(study_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _search(args) -> int:
    return _run_search(args, worker=False)


def _worker(args) -> int:
    return _run_search(args, worker=True)


def _run_search(args, *, worker: bool) -> int:
    from suite.search import SearchFailed, run_search

    study = _load(args.study)
    if not worker and args.parallel_config is not None:
        return _submit_search(args, study)
    if not worker and (args.workers is not None or args.no_wait):
        raise StudyError("--workers/--no-wait", ["need --parallel-config CLUSTER_YML (docs/cluster.md); on one "
                                                 "machine start more `spikesuite worker` processes"])
    try:
        summaries = run_search(study, args.results, source=str(args.study), storage=args.storage,
                               n_trials=args.n_trials, worker=worker, device=args.device,
                               progress=not args.no_progress and sys.stderr.isatty())
    except SearchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = False
    for s in summaries:
        print(f"{s.optuna_study} ({s.storage}): {len(s.ran)} trials completed now, {len(s.pruned)} pruned, "
              f"{len(s.failed)} failed; the study holds {s.n_trials} trials ({s.n_complete} complete"
              f"{f', budget {s.budget}' if s.budget is not None else ''}) ({s.wall_time_s:.1f} s)")
        if s.pareto is not None and not s.pareto.empty:
            print(f"Pareto set ({len(s.pareto)} trials):")
            print(s.pareto.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for p in s.paths:
            print(f"wrote {p}")
        if s.failed:
            failed = True
            print("failed trials (recorded in the study with their error):", file=sys.stderr)
            for n, reason in s.failed.items():
                print(f"  trial {n}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _submit_search(args, study: Study) -> int:
    from suite.run.cluster_file import load_cluster
    from suite.search import submit_workers

    cluster = load_cluster(args.parallel_config)
    if cluster.backend == "local":
        raise StudyError(str(args.parallel_config), ["backend: local: run `spikesuite search STUDY` here and more "
                                                     "`spikesuite worker STUDY --storage ...` processes beside it; "
                                                     "backend: submitit submits --workers workers"])
    outcomes = submit_workers(study, args.results, cluster, source=str(args.study), storage=args.storage,
                              n_trials=args.n_trials, workers=args.workers or 1, device=args.device,
                              wait=not args.no_wait, out=lambda line: print(line, flush=True))
    if args.no_wait:
        print(f"watch: spikesuite status {args.study}; stop: spikesuite cancel {args.study}")
        return 0
    failed = [o for o in outcomes if o.error]
    for o in outcomes:
        print(f"search worker {o.index} (job {o.job_id}): " + (f"FAILED: {o.error}" if o.error else o.text))
    return 1 if failed else 0


def _ui(args) -> int:
    from suite.config import TrackingConfig
    from suite.tracking import tracking_uri

    uri = args.uri or tracking_uri(TrackingConfig(), args.results)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    if uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", (args.results / "mlartifacts").resolve().as_uri()]
    print(f"MLflow UI on http://{args.host}:{args.port}  (store: {uri}; Ctrl-C to stop)", flush=True)
    env = dict(os.environ)
    return subprocess.call(cmd, env=env)


def _bench(args) -> int:
    """Training step time vs spikingjelly's Spikformer, inference images/s at active-token fractions (dense,
    masked, compacted) and the smoke study end to end; writes bench.csv, bench.png/pdf and machine.json."""
    from suite.bench import run_bench

    try:
        parts = tuple(int(p) for p in args.parts.split(",") if p.strip())
        run_bench(args.out, quick=args.quick, device=args.device, parts=parts, profile=not args.no_profile)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
