"""Prune the runtime venv: run with the venv's own python after installing
requirements/runtime.txt and the project wheels (the Dockerfile's `venv` stage and
tests/deploy/test_runtime_venv.py run this same file).

What goes is what serving never loads: OpenVINO's GPU and NPU plugins, its other devices'
helpers (AUTO, HETERO, AUTO_BATCH: the engine compiles on "CPU" by name) and its frontends
but ONNX (the artifact is model.onnx) and IR (kept: small, and what OpenVINO's own files
are); their Python halves, the converters and the C/C++ SDK; ONNX Runtime's C API library
(35 MB: its Python binding carries its own copy) and its transformers/quantization tools;
numpy's test suites and f2py; console scripts of what was removed; and last pip and
setuptools themselves (nothing installs at run time). Bytecode (__pycache__) stays: a
read-only image cannot write it, and compiling at every start costs cold-start time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Globs under site-packages.
SITE = (
    "openvino/libs/libopenvino_intel_gpu_plugin.so",
    "openvino/libs/libopenvino_intel_npu_plugin.so",
    "openvino/libs/libopenvino_auto_plugin.so",
    "openvino/libs/libopenvino_auto_batch_plugin.so",
    "openvino/libs/libopenvino_hetero_plugin.so",
    "openvino/libs/libopenvino_c.so*",
    "openvino/libs/cache.json",  # the GPU plugin's kernel tuning cache
    "openvino/libs/libopenvino_tensorflow_frontend.so*",
    "openvino/libs/libopenvino_tensorflow_lite_frontend.so*",
    "openvino/libs/libopenvino_paddle_frontend.so*",
    "openvino/libs/libopenvino_pytorch_frontend.so*",
    "openvino/libs/libopenvino_jax_frontend.so*",
    "openvino/libs/libopenvino_gguf_frontend.so*",
    "openvino/frontend/tensorflow",
    "openvino/frontend/paddle",
    "openvino/frontend/pytorch",
    "openvino/frontend/jax",
    "openvino/tools",
    "openvino/include",
    "openvino/cmake",
    # The C API library for other programs: the Python binding links ONNX Runtime in itself
    # (ldd shows no libonnxruntime), and serving loads only the binding.
    "onnxruntime/capi/libonnxruntime.so*",
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/tools",
    "numpy/**/tests",
    "numpy/f2py",
    "numpy/distutils",
    "numpy/_core/include",
)
# Console scripts whose modules went above.
SCRIPTS = ("ovc", "benchmark_app", "onnxruntime_test", "f2py")


def size(path: Path) -> int:
    """Bytes on disk under `path` (a file or a tree), links not followed."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def remove(path: Path) -> int:
    """Delete `path`; the bytes it held."""
    freed = size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return freed


def main() -> int:
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        print("prune.py: run it with the runtime venv's python", file=sys.stderr)
        return 2
    site = Path(sysconfig.get_paths()["purelib"])
    freed, unmatched = 0, []
    for pattern in SITE:
        found = sorted(site.glob(pattern))
        unmatched += [pattern] if not found else []
        freed += sum(remove(p) for p in found if p.exists())
    freed += sum(remove(prefix / "bin" / name) for name in SCRIPTS
                 if (prefix / "bin" / name).exists())
    before = size(prefix)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "pip", "setuptools"],
                   check=True)
    freed += before - size(prefix)
    if unmatched:  # a new release moved something: the size check shows whether it matters
        print(f"prune.py: nothing matched {', '.join(unmatched)}", file=sys.stderr)
    print(f"prune.py: freed {freed / 1e6:.1f} MB; the venv is {size(prefix) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
