"""What the model runtime and the operator must agree on, in one place that both import.

- `metrics`: the names and labels of the runtime's Prometheus series;
- `promql`: the one builder of PromQL selectors over them (escaped, namespace-scoped);
- `modelspec`: the model artifact format (feature spec, reference profile) stored in MLflow.

Neither the runtime nor the operator imports the other; this package imports neither (lint-imports).
"""
