"""The benchmarks, one module per topic; :mod:`bench.suites.common` holds what they share."""
