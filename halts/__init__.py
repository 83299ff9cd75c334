"""Halts, reduce-only, throttles, temporary limit overrides and the kill switch (docs/halts.md)."""
