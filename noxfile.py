"""nox sessions: tests, the smoke study, the reference results, lint, a real SLURM, the GPU acceptance run. Sessions
reuse their venvs (torch is 5.5 GB)."""

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def slurm(session: nox.Session) -> None:
    """Bring up a single-node SLURM on this machine (.ci/slurm.sh up: installs and starts slurmctld, slurmd,
    slurmdbd, MariaDB and munge; root, or sudo) and run the tests against it. `.ci/slurm.sh down` stops it."""
    session.install("-e", ".[test]")
    up = [".ci/slurm.sh", "up"] if os.geteuid() == 0 else ["sudo", ".ci/slurm.sh", "up"]
    session.run(*up, external=True)
    session.run("pytest", "-q", "tests/test_slurm.py", "tests/test_doctor.py", *session.posargs,
                env={"OMP_NUM_THREADS": "1"})


@nox.session(python="3.11")
def gpu(session: nox.Session) -> None:
    """The GPU acceptance run (at most about 10 minutes on one GPU): doctor, bench --device cuda, one epoch of
    Spikformer-4-384 and SDT-2-512 on CIFAR-shaped data, compacted == masked, bf16 vs fp32 spike counts, DDP over
    NCCL; writes results/bench/cuda/<hardware>/. Refuses without CUDA (exit 2)."""
    session.install("-e", ".")
    session.run("python", "-m", "suite.bench.acceptance", "--out", "results/bench/cuda", *session.posargs)


@nox.session(python="3.11")
def smoke(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("spikesuite", "run", "studies/smoke.yaml", *session.posargs)


# The committed reference results (results/reference/, see results/README.md): train, search, report.
REFERENCE_STUDIES = ("atsnn_digits", "tmask_digits", "baselines_digits", "atsnn_fashion_mnist", "backbones_digits",
                     "adaptive_fashion_mnist", "adaptive_fashion_mnist_recipe", "halting_gates", "qkformer_digits",
                     "events_simulated", "halting_gates_fashion_mnist", "adaptive_fashion_mnist_full")
# run with --workers 2 (1 thread each), as committed
PARALLEL = {"backbones_digits", "adaptive_fashion_mnist", "halting_gates", "halting_gates_fashion_mnist",
            "adaptive_fashion_mnist_full"}
# evaluations made after a study's runs (`spikesuite evaluate`): (run id, --set, --name); spikesuite plan shows the ids
FULL_DROP_RUNS = ("57cfb1ab7bf2", "cb12f94bba00", "5e5703800868", "88132addd439", "cc7a2b758317")  # random_drop_ft
POST_HOC_EVALS = {
    # training-free ToMe on atsnn_fashion_mnist's dense checkpoint (no second dense run)
    "atsnn_fashion_mnist": [("37bebed778ed", "tokens.merge={r: 6}", "tome_r6")],
    # adaptive_fashion_mnist_full's drop curve down to halting's 37 % point (report/matched.md)
    "adaptive_fashion_mnist_full": [(rid, f"tokens.drop.keep_ratio={keep}", f"keep{keep}") for rid in FULL_DROP_RUNS
                                    for keep in ("0.3", "0.4")],
}


@nox.session(python="3.11")
def reference(session: nox.Session) -> None:
    """Regenerate results/reference/ (hours on 2 CPU cores; finished runs are skipped). Fashion-MNIST needs
    apt-get install -y dataset-fashion-mnist. Pass study names to run only those."""
    session.install("-e", ".")
    for name in session.posargs or REFERENCE_STUDIES:
        study = f"studies/{name}.yaml"
        workers = ["--workers", "2"] if name in PARALLEL else []
        env = {"OMP_NUM_THREADS": "1"} if workers else None
        session.run("spikesuite", "run", study, "--results", "results/reference", "--no-report", *workers, env=env)
        if "search:" in open(study, encoding="utf-8").read():
            session.run("spikesuite", "search", study, "--results", "results/reference")
        for rid, setting, eval_name in POST_HOC_EVALS.get(name, ()):
            session.run("spikesuite", "evaluate", study, rid, "--set", setting, "--name", eval_name,
                        "--results", "results/reference", env=env)
        session.run("spikesuite", "report", f"results/reference/{name}")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "suite", "baselines", "tests", "noxfile.py")
