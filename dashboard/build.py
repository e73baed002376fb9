"""Build the dashboard into cockpit_api/dashboard/ (the output is committed).

1. openapi-typescript turns openapi.yaml and cockpit_api/control.yaml into
   src/generated/*.d.ts, so the page is typed against the specs;
2. tsc compiles src/*.ts into cockpit_api/dashboard/js/ (plain ES modules: no bundler);
3. uPlot, pinned in package.json, is copied with its license into
   cockpit_api/dashboard/vendor/uplot/ (no CDN: the page works offline).

`make dashboard` runs it (after `npm ci`); `make serve` needs none of it, only Python.
tests/test_dashboard_build.py rebuilds into a temporary folder and checks that the
committed output is what the sources and the specs give now.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "cockpit_api" / "dashboard"
NODE_MODULES = ROOT / "node_modules"
SPECS = {"cockpit.d.ts": ROOT / "openapi.yaml",
         "control.d.ts": ROOT / "cockpit_api" / "control.yaml"}
UPLOT_FILES = {"dist/uPlot.iife.min.js": "uPlot.iife.min.js", "dist/uPlot.min.css": "uPlot.min.css",
               "LICENSE": "LICENSE"}


class BuildError(Exception):
    pass


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def generate_types(src: Path, node_modules: Path = NODE_MODULES,
                   specs: dict[str, Path] | None = None) -> None:
    gen = src / "src" / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    for name, spec in (specs or SPECS).items():
        _run([str(node_modules / ".bin" / "openapi-typescript"), str(spec),
              "-o", str(gen / name)], src)


def compile_ts(src: Path, out: Path, node_modules: Path = NODE_MODULES) -> None:
    js = out / "js"
    shutil.rmtree(js, ignore_errors=True)
    _run([str(node_modules / ".bin" / "tsc"), "-p", str(src / "tsconfig.json"),
          "--outDir", str(js)], src)


def vendor(out: Path, node_modules: Path = NODE_MODULES) -> None:
    dest = out / "vendor" / "uplot"
    dest.mkdir(parents=True, exist_ok=True)
    for name, target in UPLOT_FILES.items():
        shutil.copyfile(node_modules / "uplot" / name, dest / target)
    version = _package_version(node_modules / "uplot" / "package.json")
    (dest / "VERSION").write_text(f"uplot {version} (npm, pinned in package.json)\n")


def _package_version(path: Path) -> str:
    import json

    version: str = json.loads(path.read_text())["version"]
    return version


def build(src: Path = HERE, out: Path = OUT, node_modules: Path = NODE_MODULES) -> None:
    if not (node_modules / ".bin" / "tsc").exists():
        raise BuildError(f"no TypeScript in {node_modules}: run `npm ci` first")
    generate_types(src, node_modules)
    compile_ts(src, out, node_modules)
    vendor(out, node_modules)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = parser.parse_args()
    try:
        build(out=args.out)
    except BuildError as exc:
        print(f"dashboard build: {exc}", file=sys.stderr)
        return 1
    print(f"dashboard built into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
