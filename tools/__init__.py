"""The command lines, run from a checkout (``python tools/<command>.py``): the user's commands here,
the side-by-side measurements in :mod:`tools.benchmarks`. A package only so that tests import the
measurements' code as modules; the tools themselves are scripts and are not installed."""
