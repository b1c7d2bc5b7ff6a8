"""The `medserve` command line: one entry point that dispatches to the module owning each command.

Each command module exposes `main(argv: list[str]) -> int` and is imported lazily, so that
`medserve validate` does not pay for kopf or the sandbox.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "crds": ("medserve_operator.tools.crdgen", "write crds/*.yaml (and the chart's copy) from the API models"),
    "validate": ("medserve_operator.tools.validate", "check manifests offline against the API models"),
    "render": ("medserve_operator.tools.render", "print the KServe and batch objects the operator would create"),
    "operator": ("medserve_operator.main", "run the operator (kopf) against the current kubeconfig"),
    "emulator": ("medserve_sandbox.emulator", "run the Kubernetes API emulator on loopback"),
    "sandbox": ("medserve_sandbox.run", "run the whole system on loopback (the demo)"),
    "drift": ("medserve_operator.stats.driftsim", "drift tools: `medserve drift simulate` checks the alarm rule"),
    "abtest": ("medserve_operator.stats.abtestsim",
               "A/B statistics: `medserve abtest simulate` measures error rates, power, stopping time"),
    "audit": ("medserve_runtime.audit", "audit log tools: `medserve audit verify FILE` checks a hash chain"),
}


def usage() -> str:
    lines = ["usage: medserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"medserve: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
