"""Benchmark plumbing: collect ``bench_*.py`` files and print the fast-path figures.

``pyproject.toml`` collects ``test_*.py`` under ``tests/``; benchmarks live in ``bench/``
as ``bench_*.py`` so that the test suite never runs them by accident, and this hook
collects them when ``bench`` is given to pytest (``make bench``). The figures the
benchmarks record in the ``fastpath_figures`` fixture are printed as one table at the
end of the run, so the kernel / reference ratio is read off a single run.
"""

from __future__ import annotations

import pytest

_FIGURES = pytest.StashKey[dict]()


def pytest_collect_file(file_path, parent):
    # Paths named on the command line are collected by pytest itself, whatever their name.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def fastpath_figures(request) -> dict[str, float]:
    """Figures (name -> value) to print in the summary table."""
    return request.config.stash.setdefault(_FIGURES, {})


def pytest_terminal_summary(terminalreporter, config):
    figures = config.stash.get(_FIGURES, {})
    if not figures:
        return
    terminalreporter.section("fastpath figures")
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        terminalreporter.write_line(f"{name:<{width}}  {value:12.1f}")
