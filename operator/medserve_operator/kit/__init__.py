"""The reconcilers' toolkit: conditions, the status writer, child objects, manifest helpers, the reconciler base.

What the three controllers share lives here once: `conditions` (pure condition arithmetic), `manifest`
(pure: labels, owner references, security contexts, what the operator owns of a child), `apply` (get,
create or replace a child; a 409 on create handled in one place), `status` (per-object memory and the status
writer), `reconciler` (the locked prologue and epilogue every reconciliation runs, and kopf registration).
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

Logger: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"
"""What the handlers are given to log with (kopf passes a LoggerAdapter)."""
