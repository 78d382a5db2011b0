"""``spikesuite`` / ``python -m suite``: declarative benchmarks of spiking vision transformers.

``run`` trains and evaluates every run of a study (YAML), ``plan`` lists them first, ``report`` regenerates
figures, tables and ``report.html`` from the records, ``ui`` browses the runs in MLflow; ``evaluate``, ``search``,
``worker``, ``status``, ``cancel`` and ``bench`` cover re-evaluation, Optuna searches, clusters and timing;
``doctor`` checks what a machine offers a study.

Exit codes: 0 success, 1 some runs failed, 2 bad input (nothing written)."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import sys
import textwrap
from pathlib import Path

from suite.config import Study, StudyError, TrackingConfig, load_study

log = logging.getLogger("spikesuite")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # fontTools logs every table it subsets while matplotlib writes a PDF (dozens of lines per figure) at INFO
    for noisy in ("mlflow", "alembic", "optuna", "urllib3", "git", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "verbose", False):  # details a normal run keeps quiet (figures that do not apply, ...)
        for name in ("spikesuite", "suite"):  # the suite logs under "spikesuite" or its module names (suite.*)
            logging.getLogger(name).setLevel(logging.DEBUG)
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


# Docstrings are written for Sphinx; help text is read in a terminal, where ``x`` and :func:`x` are noise.
_RST = ((re.compile(r":[\w:.-]+:`~?([^`<]+?)(?:\s*<[^>]*>)?`"), r"\1"),  # :role:`target` and :role:`text <t>`
        (re.compile(r"``([^`]+)``"), r"\1"),
        (re.compile(r"`([^`]+)`_{0,2}"), r"\1"))


def plain(text: str | None) -> str:
    """``text`` without reStructuredText markup, dedented and with each paragraph re-wrapped for a terminal."""
    text = inspect.cleandoc(text or "")
    for pattern, repl in _RST:
        text = pattern.sub(repl, text)
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    width = min(88, shutil.get_terminal_size().columns - 2)  # argparse wraps its own help at the same width
    return "\n\n".join(textwrap.fill(p, width=width) for p in paragraphs if p)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows an option's default where it is a value (a None default means 'from the study' and a flag is off
    unless given: their help says so); keeps the paragraphs of a description (``plain`` wraps them)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return super()._get_help_string(action)


def version() -> str:
    """The installed distribution's version; the package's ``__version__`` when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("spikesuite")
    except metadata.PackageNotFoundError:
        import suite

        return str(getattr(suite, "__version__", "unknown"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikesuite", description=plain(__doc__), formatter_class=_HelpFormatter,
                                epilog="spikesuite COMMAND -h shows a command's options.")
    p.add_argument("--version", action="version", version=f"spikesuite {version()}",
                   help="print the installed version and exit")
    sub = p.add_subparsers(required=True, metavar="COMMAND", title="commands")

    def cmd(name: str, func, help: str, description: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=plain(description or help), formatter_class=_HelpFormatter)
        sp.set_defaults(func=func)
        sp.add_argument("--results", type=Path, default=Path("results"),
                        help="records directory: one folder per study, and the MLflow store (mlflow.db)")
        return sp

    def study_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("study", type=Path, help="the study file (YAML), e.g. studies/smoke.yaml")

    r = cmd("run", _run, "train and evaluate every run of a study (finished runs are skipped)",
            "Train and evaluate every run of a study; finished runs are skipped, so the same command resumes. "
            "Ends with the report (report.html) and the command that browses the runs in MLflow.")
    study_arg(r)
    r.add_argument("--workers", type=int, default=None, help="processes sharing the study (default: execution.workers)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: execution.device)")
    r.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars (off anyway when stderr "
                   "is not a terminal)")
    r.add_argument("--no-report", action="store_true", help="skip the figures, tables and report.html at the end "
                   "(spikesuite report writes them later)")
    r.add_argument("--verbose", action="store_true", help="list every file the report writes and every figure "
                   "that does not apply to the study")
    r.add_argument("--parallel-config", type=Path, default=None, metavar="CLUSTER_YML",
                   help="run through the cluster file's backend (local pool or submitit job arrays; docs/cluster.md)")
    r.add_argument("--no-wait", action="store_true",
                   help="with --parallel-config: submit and return (watch with spikesuite status STUDY)")
    r.add_argument("--nproc-per-run", type=int, default=None, metavar="N",
                   help="torch.distributed ranks per run (default: resources.nproc_per_run)")

    st = cmd("status", _status, "each run's state from the records, with the job holding it and that job's state")
    study_arg(st)

    ca = cmd("cancel", _cancel, "cancel the study's pending and running jobs (runs and search workers)")
    study_arg(ca)

    pl = cmd("plan", _plan, "dry run: list the expanded runs, their ids and status",
             "Dry run: list the expanded runs, their ids and their state in the records; writes nothing and imports "
             "no torch. A dataset missing on this machine gives a warning saying how to get it (run refuses).")
    study_arg(pl)

    e = cmd("evaluate", _evaluate, "re-evaluate a trained run with evaluation-time settings changed")
    study_arg(e)
    e.add_argument("run_id", help="the run to evaluate (an id from spikesuite plan)")
    e.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="an evaluation-time setting, e.g. tokens.halting.beta_offset=-2 (value parsed as YAML; "
                   "repeatable; default: none, the run's own settings)")
    e.add_argument("--name", default=None, help="name of the recorded evaluation (default: made from --set)")

    rep = cmd("report", _report, "figures, tables and report.html from a study's records")
    rep.add_argument("target", help="a study file (its records under --results) or a records directory "
                     "results/<study>")
    rep.add_argument("--style", choices=("default", "paper"), default="default",
                     help="figure style; paper also writes the accuracy-vs-cost figures one and two columns wide "
                     "(report/paper/)")
    rep.add_argument("--verbose", action="store_true", help="list every file written and every figure that does "
                     "not apply to the study")

    searches = (
        ("search", _search, "Optuna search over the study's search: block (resumes; n_trials is the study's total)",
         "sqlite:///PATH, journal:PATH, postgresql://... (default: search.storage, else "
         "results/<study>/optuna.db)",
         "total trials the study should hold (default: search.n_trials)"),
        ("worker", _worker, "one of several processes running a search together on a shared storage",
         "journal:PATH (one machine) or postgresql://... (several) (default: search.storage)",
         "total trials for all workers together (default: search.n_trials)"),
    )
    for name, func, help_text, storage_help, trials_help in searches:
        se = cmd(name, func, help_text)
        study_arg(se)
        se.add_argument("--storage", default=None, metavar="URL", help=storage_help)
        se.add_argument("--n-trials", type=int, default=None, help=trials_help)
        se.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: execution.device)")
        se.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "search":
            se.add_argument("--parallel-config", type=Path, default=None, metavar="CLUSTER_YML",
                            help="submit --workers search workers through the cluster file's backend")
            se.add_argument("--workers", type=int, default=None, metavar="N",
                            help="with --parallel-config: workers to submit (default: 1)")
            se.add_argument("--no-wait", action="store_true", help="with --parallel-config: submit and return")

    u = cmd("ui", _ui, "browse the runs: the MLflow UI over the suite's tracking store",
            "Start the MLflow UI over the suite's tracking store (the sqlite store under --results unless "
            "MLFLOW_TRACKING_URI or --uri names another); Ctrl-C or SIGTERM stops it and all its processes.")
    u.add_argument("--host", default="127.0.0.1", help="bind address; 127.0.0.1 serves this machine only, "
                   "0.0.0.0 every network")
    u.add_argument("--port", type=int, default=5000, help="port to serve on")
    u.add_argument("--workers", type=int, default=1, metavar="N", help="server worker processes (one serves a "
                   "browser; each more costs start-up time and memory)")
    u.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI, else the sqlite store "
                   "under --results)")

    doc = cmd("doctor", _doctor, "what this machine offers a study, and what would make one fail (exit 1)",
              "Versions, devices and their bf16/fp16 autocast, the spikingjelly kernel each backbone's LIF layers run "
              "on, gloo/NCCL, dataset roots, the MLflow store and Optuna storage, SLURM commands; given a study (and "
              "a cluster file) its own settings too. Exit 1 when something would make a study fail; each problem "
              "says what to do. Reads only.")
    doc.add_argument("study", type=Path, nargs="?", default=None, help="a study file to check as well (optional)")
    doc.add_argument("--parallel-config", type=Path, default=None, metavar="CLUSTER_YML",
                     help="a cluster file to check as well (SLURM commands, partition, time limit)")
    doc.add_argument("--device", default="auto", help="the device the study would run on: auto, cpu, cuda ...")

    b = sub.add_parser("bench", help="wall-clock ratios: training step vs spikingjelly, compacted inference, "
                       "study end to end, training and evaluation throughput", description=plain(_bench.__doc__), formatter_class=_HelpFormatter)
    b.set_defaults(func=_bench)
    b.add_argument("--out", type=Path, default=Path("results/bench"), help="output directory")
    b.add_argument("--quick", action="store_true", help="tiny shapes and a tiny study (checks that it runs)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda runs under bf16 autocast")
    b.add_argument("--parts", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
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
    page = None
    if not args.no_report:
        page = _report_dir(summary.study_dir, verbose=args.verbose)
    n = len(summary.done) + len(summary.skipped) + len(summary.failed) + len(summary.busy)
    print(f"{study.name}: {n} runs: {len(summary.done)} run now, {len(summary.skipped)} already done, "
          f"{len(summary.busy)} run by another process, {len(summary.failed)} failed "
          f"({summary.wall_time_s:.1f} s). Records: {summary.study_dir}")
    if summary.failed:
        print("failed runs (rerun the same command to retry them):", file=sys.stderr)
        for rid, reason in summary.failed.items():
            print(f"  {rid}: {reason}", file=sys.stderr)
    print(closing_line(page, summary.study_dir, ui_command(args.results, study.tracking)))
    return 1 if summary.failed else 0


def ui_command(results: Path, tracking: TrackingConfig | None) -> str | None:
    """The command that browses a study's runs: ``spikesuite ui`` over the store the runs were mirrored to (None
    when the study turns tracking off)."""
    from suite.tracking import redact

    if tracking is not None and not tracking.enabled:
        return None
    # MLFLOW_TRACKING_URI wins over the study's uri when runs are mirrored, and `spikesuite ui` reads it too.
    if tracking is not None and tracking.uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        return f"spikesuite ui --uri {shlex.quote(redact(tracking.uri))}"
    return f"spikesuite ui --results {shlex.quote(str(results))}"


def closing_line(page: Path | None, study_dir: Path, ui: str | None) -> str:
    """The last thing ``run`` and ``report`` say: where the report is and how to browse the runs."""
    report = f"report: {page}" if page is not None else \
        f"no report written (write it with: spikesuite report {shlex.quote(str(study_dir))})"
    return report + (f"; browse the runs: {ui}" if ui else "")


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
    from suite.run.study import plan_study  # the records and the path checks only: no torch, no mlflow

    study = _load(args.study)
    sdir, planned, missing = plan_study(study, args.results, source=str(args.study))
    print(f"{study.name}: {len(planned)} runs -> {sdir}")
    print(f"{'run id':<13} {'status':<8} {'variant':<16} {'starts from':<25} axes")
    for spec, state in planned:
        axes = {k: v for k, v in spec.axes.items() if k != "variant"}
        start = f"weights of {spec.trained_by}" if spec.trained_by else f"fine-tunes {spec.parent}" if spec.parent \
            else "scratch"
        print(f"{spec.run_id:<13} {state:<8} {spec.variant:<16} {start:<25} {json.dumps(axes)}")
    for message in missing:
        print(f"warning: dataset: {message}\n(spikesuite run refuses to start until it is there)", file=sys.stderr)
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


def _report_dir(study_dir: Path, *, verbose: bool = False, style: str = "default", study: Study | None = None
                ) -> Path | None:
    """Write the study's report; returns the page (report.html). ``style`` reaches the report writer only when it
    takes one (checked by signature, so this works with writers from before and after styles existed)."""
    from suite.report import build_report

    kwargs = {}
    if "style" in inspect.signature(build_report).parameters:
        kwargs["style"] = style
    elif style != "default":
        print(f"warning: this report writer has no styles; --style {style} ignored", file=sys.stderr)
    if study is not None and "report" in inspect.signature(build_report).parameters:
        kwargs["report"] = study.report  # the study file's report: settings win over the records' copy
    paths = build_report(study_dir, **kwargs)
    if verbose:
        for p in paths:
            print(f"wrote {p}")
    return paths[-1] if paths else None  # the page is written last


def _report(args) -> int:
    target = Path(args.target)
    study: Study | None = None
    if target.is_dir():
        study_dir, results = target, target.parent
    elif target.exists() or target.suffix in (".yaml", ".yml"):
        from suite.run.study import study_dir_for

        study = _load(target)
        study_dir, results = study_dir_for(args.results, study.name), args.results
    else:
        print(f"error: {target}: the records directory does not exist (report takes a results/<study> directory "
              "or a study file)", file=sys.stderr)
        return 2
    try:
        page = _report_dir(study_dir, verbose=args.verbose, style=args.style, study=study)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(closing_line(page, study_dir, ui_command(results, study.tracking if study is not None else None)))
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
    from suite.names import MLFLOW_DB
    from suite.tracking import redact, tracking_uri
    from suite.ui import port_problem, serve, server_command, server_env

    uri = args.uri or tracking_uri(TrackingConfig(), args.results)
    # A sqlite store keeps its artifacts beside it (the runs log theirs there too); a server store has its own.
    root = args.results / "mlartifacts" if uri.startswith("sqlite") else None
    if args.workers < 1:
        raise StudyError("--workers", [f"must be >= 1 (got {args.workers})"])
    if problem := port_problem(args.host, args.port):
        raise StudyError("--port", [problem])
    print(f"MLflow UI on http://{args.host}:{args.port}  (store: {redact(uri)}; Ctrl-C to stop)", flush=True)
    if uri == f"sqlite:///{(args.results / MLFLOW_DB).resolve()}" and not (args.results / MLFLOW_DB).exists():
        print(f"no runs yet under {args.results} (the store is created empty)", flush=True)
    cmd = server_command(uri, host=args.host, port=args.port, workers=args.workers, artifact_root=root)
    return serve(cmd, server_env(os.environ), host=args.host, port=args.port)


def _doctor(args) -> int:
    from suite.doctor import render, run_doctor
    from suite.run.cluster_file import load_cluster

    study = _load(args.study) if args.study is not None else None
    cluster = load_cluster(args.parallel_config) if args.parallel_config is not None else None
    checks = run_doctor(args.results, study=study, cluster=cluster, device=args.device)
    print(render(checks))
    return 1 if any(c.problem for c in checks) else 0


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
