"""Benchmark plumbing: the fast-path figures, printed as one table at the end of a run.

The benchmarks record their figures in the ``fastpath_figures`` fixture, so the kernel /
reference ratio and the per-order costs are read off a single run, whatever the capture
settings. (``pyproject.toml`` collects ``bench_*.py`` files.)
"""

from __future__ import annotations

import pytest

_FIGURES = pytest.StashKey[dict]()


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
