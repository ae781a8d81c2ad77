"""The measuring harness: variant specs, profiles, and the ``nectargan-bench`` command line."""
