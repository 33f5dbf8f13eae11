"""Eval suites' library code (`symphony eval ...`): results store with resume, memory limits, plots."""
