"""The PromQL the controllers ask about the runtime's series, built with the contract's one selector builder
(`medserve_contract.promql`: every value escaped, every selector scoped to a ModelDeployment in a namespace).

Pure: strings in, strings out.
"""

from __future__ import annotations

from medserve_contract import metrics
from medserve_contract.promql import range_ms, selector


def increase_sum(series: str, seconds: float, *, by: tuple[str, ...] = ()) -> str:
    """`sum [by (...)] (increase(series[window]))`: a counter's growth over the last `seconds`, over replicas."""
    aggregate = f"sum by ({', '.join(by)}) " if by else "sum"
    return f"{aggregate}(increase({series}[{range_ms(seconds)}]))"


def feedback_by_outcome(*, deployment: str, namespace: str, version: str | None, seconds: float) -> str:
    """Per outcome (correct, incorrect): the feedback a deployment's runtime was given over the window."""
    series = selector(metrics.FEEDBACK_TOTAL, deployment=deployment, namespace=namespace, version=version)
    return increase_sum(series, seconds, by=(metrics.OUTCOME_LABEL,))
