"""Developer sessions. ``nox`` runs lint, typecheck and tests; ``nox -s bench`` prints figures."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = False
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]
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
        *session.posargs,
        env={"TRIO_TUNNEL_FUZZ_EXAMPLES": examples},
    )
