"""Compiles every kernels/*.cu with NVRTC (through ctypes, no GPU needed) to PTX for each target
architecture, assembles the PTX with ptxas to a cubin, and fails on any compile error, a missing
`<op>_{f32,f16,bf16}` entry point, or a register spill to local memory.

Usage: check_kernels.py CUDA_HOME KERNELS_DIR ARCH... (e.g. 80 90). Prints a table of registers,
spills and shared memory per kernel, then `kernel checks: N passed, M failed`.
"""

import ctypes
import pathlib
import re
import subprocess
import sys
import tempfile


# Kernel files holding more than their namesake kernel (launched by name from src/ops).
EXTRA_ENTRIES = {"q8_matmul": ["q8_gemv"]}

def nvrtc(lib, src, name, arch, includes):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
    if rc != 0:
        return None, f"nvrtcCreateProgram failed ({rc})"
    opts = [f"--gpu-architecture=compute_{arch}", "--std=c++17", "-lineinfo"] + [f"-I{i}" for i in includes]
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return None, log.value.decode(errors="replace")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode(), log.value.decode(errors="replace")


def main():
    cuda_home, kdir, archs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
    lib = ctypes.CDLL(str(cuda_home / "lib" / "libnvrtc.so.13"))
    ptxas = cuda_home / "bin" / "ptxas"
    # Only the kernels folder: the kernels must not need the toolkit headers (see common.cuh).
    includes = [str(kdir)]
    passed = failed = 0
    print(f"{'kernel':<26} {'arch':<6} {'regs':>5} {'spill st':>9} {'spill ld':>9} {'smem':>6}")
    for cu in sorted(kdir.glob("*.cu")):
        op = cu.stem
        for arch in archs:
            ptx, log = nvrtc(lib, cu.read_text(), cu.name, arch, includes)
            if ptx is None:
                print(f"FAIL {cu.name} sm_{arch}: NVRTC error\n{log}")
                failed += 1
                continue
            entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
            kernels = [op] + EXTRA_ENTRIES.get(op, [])
            missing = {f"{k}_{t}" for k in kernels for t in ("f32", "f16", "bf16")} - entries
            if missing:
                print(f"FAIL {cu.name} sm_{arch}: missing entry points {sorted(missing)}")
                failed += 1
                continue
            with tempfile.TemporaryDirectory() as tmp:
                p = pathlib.Path(tmp) / f"{op}.ptx"
                p.write_text(ptx)
                res = subprocess.run([str(ptxas), f"-arch=sm_{arch}", "-v", str(p), "-o", str(p.with_suffix(".cubin"))],
                                     capture_output=True, text=True)
            out = res.stdout + res.stderr
            if res.returncode != 0:
                print(f"FAIL {cu.name} sm_{arch}: ptxas error\n{out}")
                failed += 1
                continue
            ok = True
            for fn, body in re.findall(r"Compiling entry function '(\w+)'.*?\n(.*?)(?=ptxas info\s+: Compiling|\Z)", out, re.S):
                regs = re.search(r"Used (\d+) registers", body)
                smem = re.search(r"(\d+) bytes smem", body)
                st = re.search(r"(\d+) bytes spill stores", body)
                ld = re.search(r"(\d+) bytes spill loads", body)
                st, ld = int(st.group(1)) if st else 0, int(ld.group(1)) if ld else 0
                print(f"{fn:<26} sm_{arch:<3} {regs.group(1) if regs else '?':>5} {st:>9} {ld:>9} {smem.group(1) if smem else '0':>6}")
                if st or ld:
                    print(f"FAIL {fn} sm_{arch}: spills to local memory")
                    ok = False
            passed += ok
            failed += not ok
    print(f"kernel checks: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
