#!/usr/bin/env python3
"""Build a TVM runtime bundle: what a machine without TVM needs to load and run an exported library.

The bundle is a folder to put on `sys.path` (run with `TVM_USE_RUNTIME_LIB=1`):
- `tvm/`: the installed `tvm` Python package without the compiler library (`lib/libtvm_compiler.so`) and
  without `3rdparty/`, `src/`, `include/`, `web/`, `__pycache__/` (a few MB instead of ~300 MB);
- `typing_extensions.py`: tvm_ffi's one pure-Python dependency;
- `tvm_ffi/`: the `apache-tvm-ffi` package, either the installed one (same Python as here) or unpacked
  from a wheel built for the other machine's Python (`--ffi-wheel`, e.g. the cp312 wheel of
  `apache-tvm-ffi==<installed version>`, which `--download-ffi 3.12` fetches with pip).

`--check` loads a library in a fresh process with only the bundle (and numpy) importable and runs its
`main` on the CPU. Usage:

    .venv/bin/python scripts/device/bundle_runtime.py out/gpu/runtime --download-ffi 3.12
    .venv/bin/python scripts/device/bundle_runtime.py out/rt311 --check lib.so   # same-Python bundle
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

EXCLUDE_DIRS = {"3rdparty", "src", "include", "web", "__pycache__", "licenses"}
EXCLUDE_FILES = {"libtvm_compiler.so"}


def _package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name!r} is not installed in this Python")
    return Path(spec.origin).parent


def _copy_tree(src: Path, dst: Path) -> None:
    def ignore(folder, names):
        rel = Path(folder).relative_to(src)
        skip = {n for n in names if n in EXCLUDE_FILES or n.endswith(".pyc")}
        if rel == Path("."):
            skip |= {n for n in names if n in EXCLUDE_DIRS}
        else:
            skip |= {n for n in names if n == "__pycache__"}
        return skip

    shutil.copytree(src, dst, ignore=ignore, symlinks=False)


def download_ffi_wheel(python_version: str, dest: Path) -> Path:
    """The manylinux x86-64 wheel of the installed apache-tvm-ffi version for another Python (pip download)."""
    version = importlib.metadata.version("apache-tvm-ffi")
    tag = python_version.replace(".", "")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", f"apache-tvm-ffi=={version}", "--no-deps",
                    "--only-binary=:all:", "--python-version", python_version, "--platform",
                    "manylinux_2_28_x86_64", "-d", str(dest)], check=True, stdout=subprocess.DEVNULL)
    wheels = sorted(dest.glob(f"apache_tvm_ffi-{version}-cp{tag}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip found no cp{tag} wheel of apache-tvm-ffi=={version}")
    return wheels[-1]


def build_bundle(out: Path, ffi_wheel: Path | None = None) -> dict:
    """Write the bundle to `out` (replaced); returns its description (also `out/bundle.json`)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _copy_tree(_package_dir("tvm"), out / "tvm")
    if ffi_wheel is None:
        _copy_tree(_package_dir("tvm_ffi"), out / "tvm_ffi")
        ffi_source = f"installed (Python {sys.version_info.major}.{sys.version_info.minor})"
    else:
        with zipfile.ZipFile(ffi_wheel) as wheel:
            members = [m for m in wheel.namelist() if m.startswith("tvm_ffi/")
                       and Path(m).name not in EXCLUDE_FILES and "/__pycache__/" not in m]
            wheel.extractall(out, members)
        for so in (out / "tvm_ffi").rglob("*.so"):
            so.chmod(0o755)
        ffi_source = ffi_wheel.name
    import typing_extensions  # tvm_ffi's one pure-Python dependency (one file)

    shutil.copy(typing_extensions.__file__, out / "typing_extensions.py")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    info = {"tvm": importlib.metadata.version("apache-tvm"), "tvm_ffi": importlib.metadata.version("apache-tvm-ffi"),
            "tvm_ffi_source": ffi_source, "bytes": size,
            "run_with": {"PYTHONPATH": "<bundle>", "TVM_USE_RUNTIME_LIB": "1"}}
    (out / "bundle.json").write_text(json.dumps(info, indent=1))
    return info


CHECK_CODE = r"""
import json, sys
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine
lib = tvm.runtime.load_module(sys.argv[1])
vm = VirtualMachine(lib, tvm.cpu())
args = [tvm.runtime.tensor(np.asarray(a, "float32")) for a in json.loads(sys.argv[2])]
out = vm["main"](*args)
out = out if hasattr(out, "numpy") else out[0]
print(json.dumps({"out": out.numpy().tolist(), "tvm_file": tvm.__file__,
                  "compiler_loaded": any("tvm_compiler" in l for l in open("/proc/self/maps"))}))
"""


def check_bundle(bundle: Path, library: Path, inputs: list) -> dict:
    """Run `library`'s main on `inputs` (nested lists, float32) in a fresh Python that sees only the bundle (plus
    numpy's own folder) and the runtime library; returns {"out", "tvm_file", "compiler_loaded"}."""
    import numpy

    numpy_site = str(Path(numpy.__file__).parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        # numpy alone, in a folder of its own: the site-packages that holds numpy also holds tvm
        only_numpy = Path(tmp) / "numpy_only"
        only_numpy.mkdir()
        for name in os.listdir(numpy_site):
            if name == "numpy" or name.startswith("numpy.libs") or name.startswith("numpy-"):
                os.symlink(Path(numpy_site) / name, only_numpy / name)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TVM_USE_RUNTIME_LIB": "1",
               "PYTHONPATH": f"{bundle}{os.pathsep}{only_numpy}", "PYTHONNOUSERSITE": "1", "HOME": tmp}
        proc = subprocess.run([sys.executable, "-S", "-c", CHECK_CODE, str(library), json.dumps(inputs)],
                              env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
    if proc.returncode != 0:
        raise RuntimeError(f"bundle check failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="bundle folder (replaced)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--ffi-wheel", type=Path, help="apache-tvm-ffi wheel for the target Python")
    src.add_argument("--download-ffi", metavar="PYVER", help="pip-download the apache-tvm-ffi wheel for this "
                     "Python version (e.g. 3.12)")
    ap.add_argument("--check", type=Path, metavar="LIB", help="run LIB's main (one float32 input of shape "
                    "--check-shape) with the bundle in a fresh process (same-Python bundles only)")
    ap.add_argument("--check-shape", default="1,4")
    args = ap.parse_args(argv)
    wheel = args.ffi_wheel
    if args.download_ffi:
        wheel = download_ffi_wheel(args.download_ffi, args.out.parent / "wheels")
    info = build_bundle(args.out, wheel)
    print(json.dumps(info, indent=1))
    if args.check:
        import numpy as np

        shape = tuple(int(v) for v in args.check_shape.split(","))
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        print(json.dumps(check_bundle(args.out, args.check, [x.tolist()])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
