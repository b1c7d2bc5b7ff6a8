"""Offline commands: CRD generation, manifest validation, and the monitoring assets.

(alerts, dashboards and ArgoCD health checks, generated from one source).
"""
