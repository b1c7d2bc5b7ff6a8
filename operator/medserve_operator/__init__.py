"""medserve operator: serves clinical AI models on Kubernetes through KServe.

The package imports nothing heavy and touches no cluster or server at import time.
"""

__version__ = "0.1.0"
