#!/usr/bin/env bash
# The toolkit's GPU checks in one run, for a machine with an NVIDIA GPU and PyTorch but no network:
#   - tests/test_cuda.py: training steps in fp32, fp16 (loss scaling) and bf16 with channels_last, a one-process
#     NCCL DDP step, inference after optimize_for_inference at each precision against fp32, export;
#   - tools/benchmark.py --device cuda: the R101-FPN Faster R-CNN training step and inference against
#     torchvision's identical network, eager and with its backbone + FPN under torch.compile (compile time
#     reported apart), ours in fp32, fp16 and bf16 against torchvision under the same AMP precision, each model's
#     peak memory in a fresh process;
#   - tools/benchmark_compile.py --device cuda: our model eager and with its backbone compiled (solver.compile /
#     test.compile), a training step and 200 images of COCO's sizes (compile time, recompilations).
#
#   bash tools/gpu_check.sh --fetch-wheels [PYTHON_VERSION]   # where pip reaches PyPI: the dependencies a plain
#                                                            # PyTorch image lacks, as wheels into .whl/ (default 3.12)
#   bash tools/gpu_check.sh OUT_DIR                           # on the GPU machine, from the repository root
#
# On the GPU machine the wheels in .whl/ (if any) are installed into a temporary folder (nothing is fetched) and
# the repository is put on PYTHONPATH. OUT_DIR receives at most 9 files: environment.txt, test_cuda.log,
# benchmark.log and six JSON results (train_vs_tv_fp32.json, train_vs_tv_fp16.json, train_vs_tv_bf16.json and
# infer_vs_tv.json, see tools/benchmark.py --json; compile_train_fp16.json and compile_infer_fp16.json, see
# tools/benchmark_compile.py --json). The exit status is 0 when the tests passed and every
# benchmark ran.
set -uo pipefail
out=""
case "${1:-}" in
    ""|--fetch-wheels) ;;
    *) mkdir -p "$1" && out="$(cd "$1" && pwd)" || exit 1 ;;  # OUT_DIR as given from the caller's folder
esac
cd "$(dirname "$0")/.."

# what restransfer needs beyond PyTorch, torchvision, numpy, scipy, OpenCV, PyYAML, timm, safetensors, tqdm and
# matplotlib (which PyTorch GPU images carry), at the versions of the Python environment running this
WHEELS="pycocotools faster-coco-eval albumentations albucore omegaconf pydantic pydantic-core annotated-types
typing-inspection stringzilla simsimd"

if [ "${1:-}" = "--fetch-wheels" ]; then
    py="${2:-3.12}"
    specs=""
    for name in $WHEELS; do
        version=$(python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
        [ -n "$version" ] || { echo "error: $name is not installed here (pip install -e . first)" >&2; exit 2; }
        specs="$specs $name==$version"
    done
    platforms=""
    for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
             manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
        platforms="$platforms --platform $p"
    done
    mkdir -p .whl
    # shellcheck disable=SC2086
    python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        $platforms -d .whl $specs || exit 1
    ls .whl
    exit 0
fi

if [ -z "$out" ]; then
    echo "usage: bash tools/gpu_check.sh OUT_DIR   (or --fetch-wheels [PYTHON_VERSION])" >&2
    exit 2
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    site="${TMPDIR:-/tmp}/restransfer-gpu-site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .whl/*.whl || { echo "error: installing the wheels in .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

python3 - > "$out/environment.txt" <<'EOF' || { cat "$out/environment.txt"; exit 1; }
import platform, sys
try:
    import torch, torchvision
except ImportError as e:
    print(f"error: {sys.executable} cannot import PyTorch ({e}); run with the Python that has torch and torchvision")
    sys.exit(1)
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
if not torch.cuda.is_available():
    print("error: PyTorch sees no CUDA device; these checks need an NVIDIA GPU")
    sys.exit(1)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
print("cpu", platform.processor() or platform.machine())
EOF
cat "$out/environment.txt"

status=0
python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" || status=1

bench() {
    echo "== benchmark.py $*" | tee -a "$out/benchmark.log"
    # one fresh process per model for memory: max_memory_allocated does not vary with the C heap as RSS does
    python3 tools/benchmark.py configs/torchvision/faster_rcnn_r50_fpn.yaml model.backbone.depth=101 --device cuda \
        --memory-repeats 1 "$@" 2>&1 | tee -a "$out/benchmark.log" || status=1
}
# a training step runs one precision, its references the same; inference times ours and torchvision (eager and
# compiled) at each precision in one interleaved run (see tools/benchmark.py --help)
for dtype in fp32 fp16 bf16; do
    bench --train --dtype $dtype --reference eager,compile --iters 10 --warmup 3 --json "$out/train_vs_tv_$dtype.json"
done
bench --dtype fp32,fp16,bf16 --reference eager,compile --reference-dtype fp32,fp16,bf16 --iters 20 --warmup 3 \
    --json "$out/infer_vs_tv.json"
# our own model eager and with solver.compile / test.compile (its backbone compiled, dynamic shapes): the
# compile time, the steady step, the break-even step count and, over 200 images of COCO's sizes, the
# recompilations; what compile=auto's rule on CUDA is to rest on (restransfer.devices.resolve_compile)
compile_bench() {
    echo "== benchmark_compile.py $*" | tee -a "$out/benchmark.log"
    python3 tools/benchmark_compile.py configs/torchvision/faster_rcnn_r50_fpn.yaml model.backbone.depth=101 \
        model.backbone.weights=null --device cuda "$@" 2>&1 | tee -a "$out/benchmark.log" || status=1
}
compile_bench --train --dtype fp16 --size 800 1067 --batch 2 --iters 20 --warmup 3 --json "$out/compile_train_fp16.json"
compile_bench --images 200 --variants optimized,optimized+compile test.precision=fp16 --json "$out/compile_infer_fp16.json"
exit $status
