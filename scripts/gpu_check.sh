#!/usr/bin/env bash
# The prepared GPU check: a bare Linux machine with an NVIDIA GPU, no network, and a Python and a
# CUDA build of torch of its own (they may differ from ggufkit's pins). At most 10 minutes.
#
#   scripts/gpu_check.sh --prepare DIR    # on a machine with the packages (this checkout, built)
#   scripts/gpu_check.sh DIR [OUT]        # on the GPU machine, from this checkout
#
# --prepare writes into DIR (under 64 MB; checked):
#   llama.cpp.tar.xz the pinned llama.cpp with ggufkit's patches, pruned: docs/, models/, media/,
#                    examples/, tests/, benches/, pocs/, the server's web UI and every ggml backend
#                    but the CPU and CUDA ones are left out (the sdist is ~77 MB). The sdist's
#                    sha256 can no longer be checked, so tree.sha256 records the pruned tree's hash
#                    (every file's path and sha256) and the check verifies it after unpacking.
#   python/          llama-cpp-python's pure-Python `llama_cpp` package and its dist-info, so that
#                    `ggufkit build` finds the bindings installed (they load our CUDA libllama).
#   wheels/          ggufkit's pure-Python dependencies and bitsandbytes (manylinux, any Python 3);
#                    compiled ones (tokenizers, sentencepiece, ...) for GPU_PYTHON (default 3.12);
#                    not torch, numpy or hf-xet (GPU_WHEELS_SKIP): the machine brings its own.
#                    bitsandbytes keeps only its CPU library and GPU_CUDA's (default 128,130).
# The check builds llama.cpp with CUDA (CMAKE_CUDA_ARCHITECTURES from nvidia-smi), runs the
# bitsandbytes table (nf4, nf4-dq, fp4, fp4-dq, int8) on CUDA and the GGUF eval on the CPU and
# with every layer offloaded, on the embedded tiny-llama, and writes the before/after tables
# (VRAM, tokens/s, perplexity) with the date and the GPU to OUT/gpu-check-<date>.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LIMIT_MB=64
PLATFORMS=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
    manylinux_2_34 manylinux_2_35; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done
TINY="$ROOT/ggufkit/data/models/tiny-llama"

tree_hash() {  # every file's relative path and sha256, sorted: one hash for the tree
    (cd "$1" && find . -type f ! -name '.ggufkit-tree' -print0 | LC_ALL=C sort -z \
        | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

prepare() {
    local dir="$1" python="${PYTHON:-$ROOT/.venv/bin/python}" src sdist version
    mkdir -p "$dir/wheels" "$dir/python"
    src="$("$python" -c 'from ggufkit.llamacpp.source import ensure_source; print(ensure_source())')"
    local pruned backends=() backend
    for backend in "$src"/ggml/src/ggml-*/; do  # backend folders only, not ggml-*.c files
        case "$(basename "$backend")" in
            ggml-cpu|ggml-cuda) ;;
            *) backends+=("--exclude=./ggml/src/$(basename "$backend")") ;;
        esac
    done
    pruned="$(mktemp -d)/llama.cpp"
    mkdir -p "$pruned"
    tar -C "$src" \
        --exclude=./docs --exclude=./models --exclude=./media --exclude=./examples \
        --exclude=./tests --exclude=./benches --exclude=./pocs --exclude=./.git \
        --exclude=./tools/ui --exclude=./tools/server --exclude=./tools/cli \
        "${backends[@]}" -cf - . | tar -C "$pruned" -xf -
    tree_hash "$pruned" > "$dir/tree.sha256"
    tar -C "$(dirname "$pruned")" -cJf "$dir/llama.cpp.tar.xz" llama.cpp
    rm -rf "$(dirname "$pruned")"
    # The bindings: the Python package inside the pinned sdist, nothing compiled.
    sdist="$("$python" -c 'from ggufkit.llamacpp.source import fetch_sdist, read_pin
print(fetch_sdist(read_pin()))')"
    version="$("$python" -c 'from ggufkit.llamacpp.source import read_pin; print(read_pin().version)')"
    rm -rf "$dir/python/llama_cpp" "$dir/python"/llama_cpp_python-*.dist-info
    tar -C "$dir/python" --strip-components=1 -xzf "$sdist" "llama_cpp_python-$version/llama_cpp"
    mkdir -p "$dir/python/llama_cpp_python-$version.dist-info"
    printf 'Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: %s\n' "$version" \
        > "$dir/python/llama_cpp_python-$version.dist-info/METADATA"
    # Everything ggufkit, the bnb path and llama_cpp import, at the versions installed here (the
    # tested ones), torch and its CUDA runtimes excluded: the GPU machine brings its own.
    "$python" - "$dir/requirements.txt" <<'EOF'
import re, sys
from importlib.metadata import distribution
from packaging.requirements import Requirement

roots = ["ggufkit", "transformers", "bitsandbytes", "accelerate", "diskcache", "typing-extensions"]
skip = re.compile(r"^(torch|triton|nvidia-.*|ggufkit|llama-cpp-python)$")
seen: dict[str, str] = {}
todo = list(roots)
while todo:
    dist = distribution(todo.pop())
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if name in seen:
        continue
    seen[name] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            if not skip.match(re.sub(r"[-_.]+", "-", req.name).lower()):
                todo.append(req.name)
lines = sorted(f"{n}=={v}" for n, v in seen.items() if not skip.match(n))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
EOF
    # numpy comes with the machine's torch; hf-xet only speeds up Hub downloads (none here).
    local skip
    for skip in ${GPU_WHEELS_SKIP-numpy hf-xet}; do
        sed -i "/^${skip}==/d" "$dir/requirements.txt"
    done
    "$python" -m pip download -q --disable-pip-version-check --only-binary=:all: \
        --python-version "${GPU_PYTHON:-3.12}" "${PLATFORMS[@]}" \
        --no-deps -d "$dir/wheels" -r "$dir/requirements.txt"
    rm -f "$dir"/wheels/torch-* "$dir"/wheels/nvidia_* "$dir"/wheels/triton-*
    # bitsandbytes ships a CUDA library for every CUDA version (129 MB unpacked): keep the CPU one
    # and those of GPU_CUDA (torch.version.cuda of the GPU machine without the dot, e.g. 128).
    "$python" - "$dir"/wheels/bitsandbytes-*.whl "${GPU_CUDA:-128,130}" <<'EOF'
import re, sys, zipfile
from pathlib import Path

wheel, keep = Path(sys.argv[1]), {f"cuda{v}" for v in sys.argv[2].split(",")}
slim = wheel.with_suffix(".slim")
def wanted(name: str) -> bool:
    found = re.search(r"libbitsandbytes_((?:cuda|rocm|xpu)\d+)", name)
    return found is None or found.group(1) in keep
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if not wanted(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if wanted(line.split(",")[0])).encode()
        dst.writestr(item, data)
slim.replace(wheel)
EOF
    local size_mb
    size_mb=$(du -sm "$dir" | cut -f1)
    echo "prepared $dir: ${size_mb} MB (limit ${LIMIT_MB} MB)"
    if [ "$size_mb" -gt "$LIMIT_MB" ]; then
        echo "over ${LIMIT_MB} MB: leave out wheels the GPU machine already has" >&2
        exit 1
    fi
}

check() {
    local dir="$1" out="${2:-$PWD}" work arch gpu stamp report
    dir="$(cd "$dir" && pwd)"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: not an NVIDIA machine" >&2; exit 1; }
    gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
    work="$(mktemp -d)"
    tar -C "$work" -xJf "$dir/llama.cpp.tar.xz"
    [ "$(tree_hash "$work/llama.cpp")" = "$(cat "$dir/tree.sha256")" ] \
        || { echo "the pruned llama.cpp tree does not match tree.sha256" >&2; exit 1; }
    stamp="$(date -u +%Y-%m-%d)"
    report="$out/gpu-check-$stamp.md"
    # The machine's own Python and torch, seen from a venv; ggufkit and the rest from the wheels.
    python3 -m venv --system-site-packages "$work/venv"
    local py="$work/venv/bin/python"
    "$py" -m pip install -q --no-index --no-deps --find-links "$dir/wheels" -r "$dir/requirements.txt"
    "$py" -c 'import numpy, torch; assert torch.cuda.is_available(), "torch sees no CUDA GPU"' 
    # ggufkit from this checkout, the bindings from the folder (found installed by `ggufkit build`).
    export PYTHONPATH="$ROOT:$dir/python${PYTHONPATH:+:$PYTHONPATH}"
    export GGUFKIT_HOME="$work/home" GGUFKIT_LLAMA_CPP_SRC="$work/llama.cpp"
    export GGUFKIT_NO_PROGRESS=1
    local gg=("$py" -m ggufkit)
    timeout 420 "${gg[@]}" build --cuda --cmake-arg "-DCMAKE_CUDA_ARCHITECTURES=$arch" \
        -j "$(nproc)"
    "${gg[@]}" convert "$TINY" -o "$work/tiny-llama-F16.gguf" --outtype f16
    "${gg[@]}" quantize "$work/tiny-llama-F16.gguf" q8_0 q4_0 q4_k_m --outdir "$work"
    local models=("$work/tiny-llama-F16.gguf" "$work"/tiny-llama-Q*.gguf)
    local cpu_table gpu_table bnb_table base_mib poller peak_file="$work/vram.peak"
    cpu_table="$(timeout 60 "${gg[@]}" eval "${models[@]}" --device cpu)"
    base_mib="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)"
    echo "$base_mib" > "$peak_file"
    ( while sleep 0.2; do
        used="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)"
        [ "$used" -gt "$(cat "$peak_file")" ] && echo "$used" > "$peak_file"
      done ) &
    poller=$!
    gpu_table="$(timeout 60 "${gg[@]}" eval "${models[@]}" --device gpu)"
    kill "$poller" 2>/dev/null || true
    bnb_table="$(timeout 120 "${gg[@]}" bnb "$TINY" --device cuda --modes nf4,nf4-dq,fp4,fp4-dq,int8)"
    {
        echo "# GPU check, $stamp"
        echo
        echo "GPU: $gpu (compute capability $arch)." \
            "$("$py" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}.")')"
        echo "Model: the embedded tiny-llama. Before: the CPU (-ngl 0); after: every layer offloaded."
        echo
        echo "## GGUF on the CPU (--device cpu)"
        echo
        echo "$cpu_table"
        echo
        echo "## GGUF offloaded (--device gpu)"
        echo
        echo "$gpu_table"
        echo
        echo "Peak VRAM during the offloaded eval: $(( $(cat "$peak_file") - base_mib )) MiB above the idle $base_mib MiB."
        echo
        echo "## bitsandbytes on CUDA (nf4, nf4-dq, fp4, fp4-dq, int8)"
        echo
        echo "$bnb_table"
    } > "$report"
    echo "wrote $report"
}

case "${1:-}" in
    --prepare) prepare "${2:?--prepare DIR}" ;;
    ""|-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' ;;
    *) check "$@" ;;
esac
