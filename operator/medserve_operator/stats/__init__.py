"""The statistics: the drift alarm rule, the always-valid sequential A/B test, their simulators.

Pure numpy/scipy code shared by the operator and the simulators.
"""
