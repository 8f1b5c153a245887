#!/usr/bin/env bash
# Build the documentation (mkdocs + mkdocstrings) with warnings as errors, into a temporary
# directory, then check the API reference is complete: every public module of `hardened` and
# every name in each public module's `__all__` has an entry in the built inventory.
set -euo pipefail
cd "$(dirname "$0")/.."

site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT

uv run mkdocs build --strict --site-dir "$site"

uv run python - "$site/objects.inv" <<'PY'
"""Every public module, and every name it exports, is documented somewhere in the reference."""

import importlib
import pkgutil
import sys
import zlib
from pathlib import Path

import hardened

raw = Path(sys.argv[1]).read_bytes()
body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
documented = {line.split(" ", 1)[0] for line in body.splitlines() if line.startswith("hardened")}

modules = ["hardened"] + [
    info.name
    for info in pkgutil.walk_packages(hardened.__path__, "hardened.")
    if not any(part.startswith("_") for part in info.name.split("."))
]
missing = []
for name in modules:
    if name not in documented:
        missing.append(f"module {name}")
        continue
    module = importlib.import_module(name)
    for export in getattr(module, "__all__", []):
        if export.startswith("_"):
            continue
        origin = getattr(getattr(module, export), "__module__", None)
        if isinstance(origin, str) and origin.split(".")[0] not in {"hardened", "typing"}:
            continue  # re-exported from a dependency (pydantic's AwareDatetime): its docs are there
        # Documented on the module itself, or in one of its public submodules.
        if not any(
            entry.startswith(name + ".") and entry.rsplit(".", 1)[-1] == export
            for entry in documented
        ):
            missing.append(f"{name}.{export}")
if missing:
    print("API reference incomplete (add the module to docs/reference/):", file=sys.stderr)
    for item in missing:
        print(f"  {item}", file=sys.stderr)
    sys.exit(1)
print(f"API reference: {len(modules)} public modules, every export documented")
PY
