"""The operator's clients of the outside world: the Kubernetes API, MLflow and Prometheus.

Async, built at start-up and never at import, handed to the controllers.
"""
