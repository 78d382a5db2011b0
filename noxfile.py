"""nox sessions: tests, the smoke study, lint. Sessions reuse their venvs (torch is 5.5 GB)."""

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def smoke(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("spikesuite", "run", "studies/smoke.yaml", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "suite", "baselines", "tests", "noxfile.py")
