"""Watchdogs: automated controls that watch risk and system health on NATS and raise
alerts or ask the halt manager for a graduated response (docs/watchdogs.md).

Public API: :class:`watchdogs.worker.WatchdogWorker` (what ``pretrade watchdogs run`` and
``pretrade up`` run), :func:`watchdogs.config.load_config` / :func:`~watchdogs.config.default_config`,
:func:`watchdogs.scenarios.run_scenario` (``pretrade scenario run``) and
:func:`watchdogs.cli.register` (adds both commands to the ``pretrade`` parser).
"""
