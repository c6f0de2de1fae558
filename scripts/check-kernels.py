#!/usr/bin/env python3
"""Compile check of every CUDA kernel, with no GPU and no CUDA toolkit.

NVRTC-compiles each kernels/*.cu for compute_80 (A100) and compute_90 (H100) with the
options the server uses (kernels/nvrtc.options; `#include "x.cuh"` lines are replaced by
kernels/x.cuh, as src/ops/cuda/mod.rs does), assembles the PTX with `ptxas -v` for sm_80
and sm_90, and prints registers, shared memory and spills per kernel. Fails on any compile
or assembly error and on any spill. NVRTC (libnvrtc.so.12, through ctypes) and ptxas come
from NVIDIA's PyPI wheels nvidia-cuda-nvrtc-cu12 and nvidia-cuda-nvcc-cu12, pinned in
tests/python/requirements.txt: run this with that venv's python (scripts/test.sh does).
"""
import ctypes
import importlib.util
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
ARCHS = ("80", "90")
INCLUDE = re.compile(r'^#include "([^"]+)".*$', re.M)


def wheel_dir(package):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"check-kernels: the Python package {package} is not installed "
                 "(see tests/python/requirements.txt)")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def options():
    lines = (KERNELS / "nvrtc.options").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def expand(src):
    return INCLUDE.sub(lambda m: (KERNELS / m.group(1)).read_text(), src)


class Nvrtc:
    def __init__(self):
        self.lib = ctypes.CDLL(str(wheel_dir("nvidia.cuda_nvrtc") / "lib" / "libnvrtc.so.12"))

    def check(self, status, what):
        if status != 0:
            raise RuntimeError(f"NVRTC {what} failed with status {status}")

    def compile(self, name, src, opts):
        """PTX text, or raises with NVRTC's log."""
        prog = ctypes.c_void_p()
        self.check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(),
                                               0, None, None), "nvrtcCreateProgram")
        try:
            argv = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            status = self.lib.nvrtcCompileProgram(prog, len(opts), argv)
            if status != 0:
                size = ctypes.c_size_t()
                self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
                log = ctypes.create_string_buffer(size.value)
                self.lib.nvrtcGetProgramLog(prog, log)
                raise RuntimeError(log.value.decode(errors="replace").strip())
            size = ctypes.c_size_t()
            self.check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            ptx = ctypes.create_string_buffer(size.value)
            self.check(self.lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
            return ptx.value.decode()
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def assemble(ptxas, ptx, arch, tmp):
    """`ptxas -v` per kernel: {name: {regs, smem, stack, spill_st, spill_ld}}."""
    src, cubin = tmp / f"k{arch}.ptx", tmp / f"k{arch}.cubin"
    src.write_text(ptx)
    run = subprocess.run([str(ptxas), f"-arch=sm_{arch}", "-v", str(src), "-o", str(cubin)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip())
    stats, current = {}, None
    for line in run.stderr.splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            current = stats.setdefault(m.group(1), {"regs": 0, "smem": 0})
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                            r"(\d+) bytes spill loads", line):
            current.update(stack=int(m[1]), spill_st=int(m[2]), spill_ld=int(m[3]))
        elif m := re.search(r"Used (\d+) registers", line):
            current["regs"] = int(m[1])
            if s := re.search(r"(\d+) bytes smem", line):
                current["smem"] = int(s[1])
    return stats


def main():
    nvrtc = Nvrtc()
    ptxas = wheel_dir("nvidia.cuda_nvcc") / "bin" / "ptxas"
    base = options()
    failures, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(KERNELS.glob("*.cu")):
            src = expand(path.read_text())
            for arch in ARCHS:
                try:
                    ptx = nvrtc.compile(path.name, src, base + [f"--gpu-architecture=compute_{arch}"])
                    stats = assemble(ptxas, ptx, arch, pathlib.Path(tmp))
                except RuntimeError as e:
                    failures.append(f"{path.name} sm_{arch}: {e}")
                    continue
                if not stats:
                    failures.append(f"{path.name} sm_{arch}: no kernels found")
                for name, st in sorted(stats.items()):
                    rows.append((path.name, name, arch, st))
                    if st.get("spill_st", 0) or st.get("spill_ld", 0):
                        failures.append(f"{path.name} {name} sm_{arch}: spills "
                                        f"({st['spill_st']} B stored, {st['spill_ld']} B loaded)")
    print(f"{'file':<22} {'kernel':<26} {'arch':<6} {'regs':>5} {'smem B':>7} "
          f"{'stack B':>7} {'spill B':>7}")
    for file, name, arch, st in rows:
        spill = st.get("spill_st", 0) + st.get("spill_ld", 0)
        print(f"{file:<22} {name:<26} sm_{arch:<3} {st['regs']:>5} {st['smem']:>7} "
              f"{st.get('stack', 0):>7} {spill:>7}")
    for f in failures:
        print(f"check-kernels: FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
