"""Configs, the `longcap` command line, executors and job entry points."""
