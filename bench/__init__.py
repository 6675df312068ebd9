"""`flywheel bench`: the benchmarks and the fault runs, beside the product and never imported by it.

report.py runs the suites and writes the report; rows.py is a summary row with its target and
reference. The suites: lsp.py (against stub_backend.py, a backend that answers at once),
backend.py (its load in backend_load.py, the requests it sends in backend_requests.py, the
references in backend_references.py), trainer.py, and faults/ (SIGKILLs at the worst moments).
tokens.py holds the tokens the suites present to their private backends.

The load generator needs aiohttp, from the bench extra: `pip install 'flywheel[bench]'`.
"""
