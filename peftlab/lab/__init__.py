"""The experiment layer on top of the library: argument parsing, the stages of a run, protocols (the paper's
settings), sweeps and their jobs, the auto layer, hyperparameter search, results tables and cost estimates.

Nothing in the library (``peftlab`` outside this package) imports from here (``tests/test_package.py``).
"""
