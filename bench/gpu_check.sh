#!/usr/bin/env bash
# The transformers runtime on one NVIDIA GPU, from a checkout of this repository (the
# package need not be installed: src/ goes on PYTHONPATH, for the bench's `rakka serve`
# child too). Nothing is downloaded: the model is the tiny random Llama that
# rakka_inference.local.tiny_model builds, its tokenizer trained on the spot.
#
#   bench/gpu_check.sh                    # from the repository root
#
# 1. The device: nvidia-smi -L, what PyTorch sees, torch and transformers versions, and the
#    GPUs rakka's placement detects (a cuda deployment needs one to be placed).
# 2. The Python modules the tests and the bench import: each missing one is named, with
#    the steps it rules out; the other steps still run.
# 3. The tiny model, built offline.
# 4. The transformers runner tests and the gateway tests that serve the tiny model through
#    it (tests/local/test_transformers_runner.py, tests/local/test_local_fallback.py), on
#    the device (RAKKA_TEST_DEVICE), coverage off.
# 5. bench/local_engine.py on the device: batched against one-at-a-time decode, then the
#    gateway's CPU per token through `rakka serve`.
# Everything printed also goes to ${OUT:-.}/gpu_check.log; the last line is a summary.
# Exit status: 0 all ran and passed; 1 a step failed or could not run; 2 no CUDA device
# (or no PyTorch / transformers, or a Python older than 3.11).
#
# Environment:
#   OUT                     where gpu_check.log goes (default: the current directory)
#   PYTHON                  the interpreter (default: python, else python3)
#   RAKKA_GPU_CHECK_DEVICE  the device checked (default: cuda; cuda:N for another GPU).
#                           cpu is for trying the script on a machine without a GPU: the
#                           same steps on the CPU, with a short bench.
#   GPU_CHECK_TIMEOUT_S     the most seconds the tests, and then the bench, may take (each;
#                           default 240)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-.}"
log="$out/gpu_check.log"
device="${RAKKA_GPU_CHECK_DEVICE:-cuda}"
limit_s="${GPU_CHECK_TIMEOUT_S:-240}"
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif command -v python >/dev/null 2>&1; then
    python=python
else
    python=python3
fi

export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 # the log interleaves in order
# The machine is offline: any attempt to reach the Hugging Face hub fails at once instead
# of waiting for a network timeout (nothing here should try).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

say() { printf '%s\n' "$*"; }
section() { printf '\n=== %s\n' "$*"; }

# What an exit status says, for the summary.
exited() {
    case "$1" in
        124 | 137) printf 'timed out after %s s' "$limit_s" ;;
        *) printf 'exit %s' "$1" ;;
    esac
}

# Runs "$@" under a time limit where `timeout` exists.
limited() {
    if command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=30 "$limit_s" "$@"
    else
        "$@"
    fi
}

# The modules the probe's report ($2) says step $1 lacks, for the summary: "openai,uvloop".
missing_for() {
    sed -n "s/^MISSING ($1): \([^ ]*\).*/\1/p" <<<"$2" | paste -sd, -
}

# Prints the device and the modules; its last line is "ready <cuda> <tests> <bench>
# <gateway> <name>", each 1 or 0 (name: the device's name, or "-").
probe() {
    "$python" - "$device" <<'PY'
import importlib
import platform
import sys

device = sys.argv[1]
print(f"python: {sys.executable} {platform.python_version()}")
if sys.version_info < (3, 11):
    print("python: rakka_inference needs Python 3.11 or newer")
    print("ready 0 0 0 0 -")
    raise SystemExit

# module -> (pip name, what needs it)
NEEDS = {
    "torch": ("torch", "all"),
    "transformers": ("transformers", "all"),
    "tokenizers": ("tokenizers", "all"),
    "safetensors": ("safetensors", "all"),
    "huggingface_hub": ("huggingface_hub", "all"),
    "jinja2": ("jinja2", "all"),
    "orjson": ("orjson", "all"),
    "aiohttp": ("aiohttp", "all"),
    "jwt": ("pyjwt", "all"),
    "cryptography": ("cryptography", "all"),
    "pytest": ("pytest", "tests"),
    "pytest_asyncio": ("pytest-asyncio", "tests"),
    "openai": ("openai", "tests"),
    "uvicorn": ("uvicorn", "tests,gateway"),
    "httpx": ("httpx", "tests,bench"),
    "uvloop": ("uvloop", "gateway"),
    "httptools": ("httptools", "gateway"),
}
missing: dict[str, list[str]] = {"all": [], "tests": [], "bench": [], "gateway": []}
versions = {}
for module, (pip_name, needed_by) in NEEDS.items():
    try:
        versions[module] = getattr(importlib.import_module(module), "__version__", "?")
    except Exception as error:  # a broken install counts as missing, and says why
        why = "" if isinstance(error, ModuleNotFoundError) else f" ({type(error).__name__}: {error})"
        for step in needed_by.split(","):
            missing[step].append(f"{module} (pip: {pip_name}){why}")
try:
    rakka = importlib.import_module("rakka_inference")
    print(f"rakka_inference: {rakka.__file__}")
except Exception as error:
    missing["all"].append(f"rakka_inference itself ({type(error).__name__}: {error})")

print(f"torch: {versions.get('torch', 'MISSING')}, transformers: "
      f"{versions.get('transformers', 'MISSING')}, tokenizers: {versions.get('tokenizers', 'MISSING')}")
cuda, name = False, "-"
if "torch" in versions:
    torch = sys.modules["torch"]
    cuda = torch.cuda.is_available()
    print(f"torch built for CUDA: {torch.version.cuda or 'no (a CPU-only build)'}")
    print(f"torch.cuda.is_available(): {cuda}, device_count: {torch.cuda.device_count()}")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"  cuda:{index}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
              f"capability {props.major}.{props.minor}")
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if cuda and index < torch.cuda.device_count():
            name = torch.cuda.get_device_name(index).replace(" ", "_")
        else:
            cuda = False
if not missing["all"]:
    from rakka_inference.runtime.placement import detect_gpu_count

    gpus = detect_gpu_count()
    print(f"GPUs rakka's placement detects (/proc/driver/nvidia/gpus, nvidia-smi -L): {gpus}")
    if device.startswith("cuda") and gpus == 0:
        print("  none: a deployment on cuda cannot be placed, so the gateway tests and the "
              "bench's rakka serve part will fail (the runner-only tests can still pass)")

for step, label in (("all", "every step"), ("tests", "the tests"), ("bench", "the bench"),
                    ("gateway", "the bench's gateway part (rakka serve)")):
    for entry in missing[step]:
        print(f"MISSING ({step}): {entry}: needed by {label}")
ok = not missing["all"]
print("ready", int(cuda), int(ok and not missing["tests"]), int(ok and not missing["bench"]),
      int(ok and not missing["bench"] and not missing["gateway"]), name)
PY
}

main() {
    local started=$SECONDS
    say "gpu_check: $(date -u +%FT%TZ) on ${HOSTNAME:-?}, device $device, repository $root"
    if [[ "$device" == cpu ]]; then
        say "gpu_check: RAKKA_GPU_CHECK_DEVICE=cpu: a dry run on the CPU, not a GPU check"
    fi

    section "device"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L || say "nvidia-smi -L failed (exit $?)"
    else
        say "nvidia-smi: not found"
    fi
    local report
    report="$(probe 2>&1)" || true
    say "$report" | grep -v '^ready ' || true
    local ready cuda can_test can_bench can_gateway name
    ready="$(say "$report" | grep '^ready ' | tail -n 1)" || true
    if [[ -z "$ready" ]]; then
        say "gpu_check: the probe in $python failed (see above)"
        say "gpu_check: SUMMARY: $device: could not start (the Python probe failed)"
        return 2
    fi
    read -r _ cuda can_test can_bench can_gateway name <<<"$ready"
    if [[ "$can_bench" == 0 && "$can_test" == 0 ]]; then
        say "gpu_check: nothing can run: see MISSING above"
        say "gpu_check: SUMMARY: $device: FAILED: nothing could run (see above)"
        return 2
    fi
    if [[ "$device" == cuda* && "$cuda" == 0 ]]; then
        say "gpu_check: no CUDA device is visible to PyTorch as '$device' (see above);"
        say "gpu_check: RAKKA_GPU_CHECK_DEVICE=cpu tries the script without a GPU"
        say "gpu_check: SUMMARY: $device: FAILED: no CUDA device"
        return 2
    fi
    [[ "$device" == cpu ]] && name=cpu

    section "tiny model (built offline)"
    if ! "$python" -c '
import sys, tempfile, time
from pathlib import Path
from rakka_inference.local.tiny_model import build_tiny_chat_model
started = time.perf_counter()
with tempfile.TemporaryDirectory() as scratch:
    built = build_tiny_chat_model(Path(scratch) / "tiny")
    files = sorted(p.name for p in built.iterdir())
print(f"built in {time.perf_counter() - started:.1f} s, no download: {files}")
'; then
        say "gpu_check: the tiny model could not be built (see above): nothing can run"
        say "gpu_check: SUMMARY: $device: FAILED: the tiny model could not be built"
        return 1
    fi

    local failed=0 tests_said bench_said ratio="-"
    local tests_log="$scratch/tests.log" bench_log="$scratch/bench.log"

    section "tests on $device (RAKKA_TEST_DEVICE=$device)"
    if [[ "$can_test" == 1 ]]; then
        # -o addopts= drops the project's pytest options (none measure coverage today;
        # this keeps it so); -p no:cacheprovider writes no .pytest_cache into the checkout.
        local status=0
        (
            cd "$root"
            RAKKA_TEST_DEVICE="$device" limited "$python" -m pytest -v -ra -p no:cacheprovider \
                -o addopts= tests/local/test_transformers_runner.py \
                tests/local/test_local_fallback.py
        ) 2>&1 | tee "$tests_log" || status=$?
        tests_said="$(grep -E '^=+ .*(passed|failed|error|skipped).* in [0-9.]+s' "$tests_log" |
            tail -n 1 | sed -E 's/^=+ //; s/ =+$//')" || true
        tests_said="${tests_said:-no result (pytest $(exited "$status"))}"
        if [[ "$status" != 0 ]]; then
            failed=1
            tests_said="FAILED: $tests_said"
        fi
    else
        failed=1
        tests_said="not run (missing: $(missing_for tests "$report"))"
        say "gpu_check: the tests cannot run: see MISSING above"
    fi

    section "bench/local_engine.py --device $device"
    if [[ "$can_bench" == 1 ]]; then
        local args=(--device "$device")
        [[ "$device" == cpu ]] && args+=(--tokens 8 --rounds 1) # a dry run: short
        [[ "$can_gateway" == 1 ]] || args+=(--no-gateway)
        [[ "$can_gateway" == 1 ]] ||
            say "gpu_check: the bench's gateway part is left out: see MISSING above"
        local status=0
        (
            cd "$root"
            limited "$python" bench/local_engine.py "${args[@]}"
        ) 2>&1 | tee "$bench_log" || status=$?
        ratio="$(awk '$1 == "16" && $NF ~ /x$/ { print $NF }' "$bench_log" | tail -n 1)"
        ratio="${ratio:--}"
        if [[ "$status" != 0 ]]; then
            failed=1
            bench_said="FAILED ($(exited "$status")), batched/one-at-a-time at 16: $ratio"
        else
            bench_said="batched/one-at-a-time at 16: $ratio"
        fi
        [[ "$can_gateway" == 1 ]] ||
            bench_said="$bench_said (gateway part not run, missing: $(missing_for gateway "$report"))"
    else
        failed=1
        bench_said="not run (missing: $(missing_for bench "$report"))"
        say "gpu_check: the bench cannot run: see MISSING above"
    fi

    section "summary"
    local verdict=OK
    [[ "$failed" == 0 ]] || verdict=FAILED
    say "gpu_check: SUMMARY: $verdict on $device ($name): tests $tests_said; bench $bench_said;" \
        "$((SECONDS - started)) s; log $log"
    return "$failed"
}

mkdir -p "$out"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
main "$@" 2>&1 | tee "$log"
