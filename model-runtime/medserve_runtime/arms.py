"""The runtime as one arm of an A/B test behind KServe's InferenceGraph router.

KServe's router (kserve `cmd/router/main.go`) calls each Splitter step at one URL and ignores the
client's path: `graphHandler` hands the body to `routeStep`, and `callService` POSTs it to the step's
`serviceUrl`, which the graph controller resolves from the InferenceService
(`pkg/controller/v1alpha1/inferencegraph/controller.go`, `Reconcile` → `isvcutils.GetPredictorEndpoint`,
`pkg/controller/v1beta1/inferenceservice/utils/utils.go`) as the predictor's address plus
`constants.PredictPath(model_name, protocol)`: `/v1/models/<model_name>:predict`, or
`/v2/models/<model_name>/infer` for protocol v2 (the container's `PROTOCOL` env), `<model_name>` being the
container's `--model_name`. The router forwards only the request headers matching its
`router.headers.propagate` patterns (`callService`, `compiledHeaderPatterns`), and answers with the step's
status and body only (`graphHandler` sets no header but Content-Type).

So, here:

- `GraphPaths` (an ASGI middleware, outside the gate) looks at POSTs to this model's two predict paths: a
  clinical body (`clinical_data`: /predict; `requests`: /batch_predict; `prediction_id` + `outcome`:
  /feedback) is served by the clinical route, as if sent there, with that route's permission, audit
  endpoint and limits; a V1 `instances` or V2 `inputs` body, or anything else, stays KServe's. Only those
  two paths are read ahead, so nothing else pays for it. Every answer to a POST names the arm in the
  header `X-Medserve-Arm: <arm>/<version>` (for direct callers), and the clinical answers say it in
  the body (`model_name`, `model_version`), which is what comes back through the router.
- Ground truth reaches the arm that predicted without a sticky router: with peers configured, prediction
  ids are `<arm>.<hex>` (`<arm>` is `--model_name`, the ModelDeployment's name), and feedback for an id
  another arm issued is forwarded (`Peers.forward_feedback`) to that arm's URL: `--peer NAME=URL`, else
  `--peer_url_template` with `{arm}` (the operator renders KServe's in-cluster predictor address, the
  `<isvc>-predictor` Service in the namespace). The client's credentials go along (both arms check
  them), with `X-Medserve-Forwarded-By` so that a forwarded request is never forwarded again. The
  forwarding arm's gate audits it once (outcome `forwarded`, the peer named), the peer audits the
  feedback it records; no body, id or key is ever logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import httpx
import orjson
from fastapi import Request, Response

from medserve_runtime.asgi import ASGIApp, Message, Receive, Scope, Send
from medserve_runtime.context import current_note
from medserve_runtime.errors import ClinicalError

logger = logging.getLogger(__name__)


ARM_HEADER = "x-medserve-arm"
FORWARDED_BY = "x-medserve-forwarded-by"
SEPARATOR = "."
"""Between the arm and the random part of a prediction id: a DNS label (the arm) has no dot."""
ARM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# The credentials the gate accepts (gate._presented_key), the only client headers a forward carries.
CREDENTIALS = ("authorization", "x-api-key")
# Which clinical route a body at the router's path is for: the first rule whose keys it has all of.
CLINICAL_BODIES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"prediction_id", "outcome"}), "/feedback"),
    (frozenset({"requests"}), "/batch_predict"),
    (frozenset({"clinical_data"}), "/predict"),
)
KSERVE_BODIES = frozenset({"instances", "inputs"})


class PeerUnavailable(ClinicalError):
    """The arm that made the prediction could not be reached in time (or answered no JSON)."""

    status = 503
    code = "peer_unavailable"


def router_paths(model_name: str) -> frozenset[str]:
    """The paths KServe's router calls for this model: `constants.PredictPath` for protocols v1 and v2."""
    return frozenset({f"/v1/models/{model_name}:predict", f"/v2/models/{model_name}/infer"})


def clinical_route(body: bytes) -> str | None:
    """The clinical route a body sent to the router's path is for; None: KServe's V1/V2 (or not JSON)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or KSERVE_BODIES & parsed.keys():
        return None
    for keys, path in CLINICAL_BODIES:
        if keys <= parsed.keys():
            return path
    return None


class GraphPaths:
    """See the module docstring: clinical bodies at the router's path go to the clinical routes."""

    def __init__(self, app: ASGIApp, *, model_name: str, version: Callable[[], str | None],
                 max_request_bytes: int) -> None:
        self.app = app
        self.model_name = model_name
        self.version = version
        self.paths = router_paths(model_name)
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):  # probes, scrapes: as they are
            await self.app(scope, receive, send)
            return
        arm_header = (ARM_HEADER.encode(), f"{self.model_name}/{self.version() or ''}".encode("latin-1"))

        async def send_naming_arm(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), arm_header]
            await send(message)

        if scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send_naming_arm)
            return
        messages, complete = await self._read_ahead(receive)
        target = clinical_route(b"".join(m.get("body", b"") for m in messages)) if complete else None
        if target is not None:
            scope = dict(scope, path=target, raw_path=target.encode(), medserve_router_path=scope["path"])
        # The gate reads the body again, and enforces the size limit on what it receives.
        await self.app(scope, _replay(messages, complete, receive), send_naming_arm)

    async def _read_ahead(self, receive: Receive) -> tuple[list[Message], bool]:
        """The body's messages, up to the size limit; complete=False when it stopped short."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, False
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return messages, size <= self.max_request_bytes
            if size > self.max_request_bytes:
                return messages, False


def _replay(messages: list[Message], complete: bool, receive: Receive) -> Receive:
    pending = list(messages)
    if complete:  # one message: the gate and the handlers see one body, as sent
        pending = [{"type": "http.request", "body": b"".join(m.get("body", b"") for m in messages),
                    "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def parse_peers(values: list[str]) -> dict[str, str]:
    """`--peer NAME=URL` values as {arm: base URL}; ValueError naming the bad one."""
    peers: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not ARM_NAME.match(name) or not url.startswith(("http://", "https://")):
            raise ValueError(f"--peer {value[:80]!r}: expected NAME=http(s)://HOST[:PORT], NAME a DNS label")
        peers[name] = url.rstrip("/")
    return peers


class Peers:
    """The other arms' URLs, and the forwarding of feedback for their predictions."""

    def __init__(self, arm: str, *, peers: dict[str, str], url_template: str | None, timeout_s: float) -> None:
        if url_template is not None and "{arm}" not in url_template:
            raise ValueError("--peer_url_template must contain {arm}")
        self.arm = arm
        self.peers = peers
        self.url_template = url_template
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def id_prefix(self) -> str:
        """What this arm's prediction ids start with."""
        return self.arm + SEPARATOR

    def owner(self, prediction_id: str) -> str | None:
        """The arm that issued `prediction_id`, when it is another arm this one can reach."""
        arm, sep, _ = prediction_id.rpartition(SEPARATOR)
        if not sep or arm == self.arm or not ARM_NAME.match(arm):
            return None
        return arm if arm in self.peers or self.url_template is not None else None

    def url_of(self, arm: str) -> str:
        if arm in self.peers:
            return self.peers[arm]
        assert self.url_template is not None  # owner() returned an arm only if one of them knows it
        return self.url_template.replace("{arm}", arm).rstrip("/")

    async def forward_feedback(self, prediction_id: str, request: Request, body: bytes) -> Response | None:
        """The owning arm's answer to feedback for its prediction; None when it is no other arm's to take."""
        if request.headers.get(FORWARDED_BY) is not None:
            return None  # forwarded to us already: never bounce it on
        arm = self.owner(prediction_id)
        if arm is None:
            return None
        note = current_note()
        note.extra["forwarded_to"] = arm
        headers = {name: request.headers[name] for name in CREDENTIALS if name in request.headers}
        headers.update({"content-type": "application/json", FORWARDED_BY: self.arm})
        try:
            answer = await self.client().post(f"{self.url_of(arm)}/feedback", content=body, headers=headers)
            orjson.loads(answer.content)
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            note.outcome = "peer_unavailable"
            # The arm and the kind of failure only: never the body, the id or the URL's query.
            logger.warning("feedback for arm %s could not be forwarded: %s", arm, type(exc).__name__)
            raise PeerUnavailable("prediction_id", f"the prediction was made by arm {arm}, which did not answer "
                                                   f"within {self.timeout_s:g} s; retry later") from None
        note.outcome = "forwarded" if answer.status_code < 400 else f"forwarded_{answer.status_code}"
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), follow_redirects=False,
                                             trust_env=False)
        return self._client
