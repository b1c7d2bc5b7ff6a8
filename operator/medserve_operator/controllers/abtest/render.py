"""Pure builders of the ABTest's child: the KServe v1alpha1 InferenceGraph splitting traffic between the arms."""

from __future__ import annotations

from typing import Any, Final

from medserve_operator.api.abtest import KIND
from medserve_operator.kit.apply import ChildKind
from medserve_operator.kit.manifest import app_labels, owner_reference

INFERENCE_GRAPH: Final = ChildKind("serving.kserve.io/v1alpha1", "inferencegraphs")
ABTEST_LABEL: Final = "medserve.io/abtest"


def render_inference_graph(*, name: str, namespace: str, uid: str, control_service: str,
                           treatment_service: str | None, treatment_percent: int) -> dict[str, Any]:
    """A KServe InferenceGraph whose root Splitter sends `treatment_percent` of the requests to the
    treatment's InferenceService and the rest to the control's, owned by the ABTest `name`.

    `treatment_service=None` routes everything to the control (a concluded test keeps its endpoint).
    """
    steps: list[dict[str, Any]] = [{"name": "control", "serviceName": control_service,
                                    "weight": 100 if treatment_service is None else 100 - treatment_percent}]
    if treatment_service is not None:
        steps.append({"name": "treatment", "serviceName": treatment_service, "weight": treatment_percent})
    return {
        "apiVersion": INFERENCE_GRAPH.api_version,
        "kind": "InferenceGraph",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": app_labels("medserve-abtest", name, **{ABTEST_LABEL: name}),
            "annotations": {},
            "ownerReferences": [owner_reference(kind=KIND, name=name, uid=uid)],
        },
        "spec": {"nodes": {"root": {"routerType": "Splitter", "steps": steps}}},
    }
