#!/usr/bin/env bash
# One prepared GPU check of G16-B0 LN+PN, everything into ONE folder, under 8 minutes on one H100: machine facts,
# the CUDA numerics tests, a bf16-mixed smoke training run, torch.profiler tables of a training step, throughput and
# peak memory (eager and torch.compile) and summary.md with the two target ratios. `--dry-run` runs the same steps
# on a CPU at tiny sizes, so CI proves every command parses and runs (tests/test_gpu_check.py).
#
# On the lent GPU machine (no internet; hydra-core, omegaconf and antlr4 travel as wheels in the git-ignored .whl/;
# call the device tool's run with carry [".whl"] and timeout_s 540), this one line; the tool hands back at most 8
# files, hence the folder under /tmp and one tarball (summary.md is also printed at the end):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && { python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .; scripts/gpu_check.sh --tar "$OUT/gpu_check.tgz" /tmp/gpu_check; }
# (the editable install may fail without costing the run: this script puts the checkout on PYTHONPATH itself).
# The wheels, made once where pip reaches PyPI (antlr4 4.9.3 is a source archive there, so it is built):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
# wandb is not needed: the smoke run logs to CSV and `-k cuda` selects no W&B test.
#
# Time budget on one H100, in run order (estimates until steps.tsv has measured seconds). BUDGET_S=450 is a hard
# deadline: a step gets min(its cap, what is left), one that cannot start any more is reported as failed, so a slow
# compile costs the last compiled rows, never the 8 minutes (450 s + kill grace + tar < 480 s):
#   facts (nvidia-smi, versions, env)                                                 15 s
#   numerics: pytest -k cuda (152 cases, Triton JIT and one fullgraph compile)       60 s
#   smoke: debug=smoke, trainer=gpu (bf16-mixed)                                     40 s
#   profiles: LN+PN fused and triton, batch 64 at 160 px, 5 steps                    40 s
#   eager benches, batch 128, bf16, warmup 2 + 8 steps, median of 3 repeats:
#     timm B0 at 224 px: 2 modes x 2 layouts x 3 = 12 runs of ~25-40 ms steps        25 s
#     at 160 px: timm, G16 LN, LN+PN fused, LN+PN triton: 48 runs, up to ~0.2 s/step
#     for G16 in NHWC (grouped convs), ~75 ms NCHW                                   80 s
#   compiled training, NCHW, 1 repeat, ~60 s of compilation per model (B0 train):
#     LN+PN fused + triton at 160 px 130 s | timm at 224 px 70 s | LN at 160 px 70 s
#   summary                                                                            2 s
# Sum ~530 s: the last compiled row (LN) is the one at risk; `STEPS=bench_g16_ln_compiled` reruns it alone, in
# ~80 s. Compiled runs skip inference and NHWC, each another minute of compilation per model, and Inductor keeps
# NCHW for grouped convs in training anyway (GPU_NOTES); COMPILE_MODES=train,infer COMPILE_LAYOUTS=nchw,nhwc widen
# them where time allows.
set -u
set -o pipefail

usage() {
  cat <<'EOF'
usage: scripts/gpu_check.sh [--dry-run] [--tar FILE] [OUT_DIR]

Runs the GPU check's steps, each into OUT_DIR/<step>.log (default: $OUT, else gpu_check_out/), goes on after a
failed step and exits 1 naming the failed ones. Files: nvidia_smi.log, versions.log, env.log, numerics.xml,
smoke/ (metrics.json), profile_<impl>.txt, bench_*.csv, summary.md (the two target ratios), steps.tsv.

  --dry-run     the same steps on the CPU at tiny sizes (32 px, batch 2, 1 step), without torch.compile
                (minutes on a CPU): under a minute on 2 cores
  --tar FILE    also pack OUT_DIR into FILE (.tgz) at the end
environment:
  DRY_RUN=1                       same as --dry-run
  STEPS=a,b                       run only these steps (names as in steps.tsv), e.g. STEPS=bench_g16_ln_compiled
  BUDGET_S=450                    deadline for all steps, seconds (GPU; the dry run has 900)
  BENCH_ARGS="--batch 64"         appended to every bench call (argparse: the last value wins)
  COMPILE_MODES=train COMPILE_LAYOUTS=nchw   what the compiled benches measure
  PYTHON=python3                  the interpreter
EOF
}

dry=${DRY_RUN:-0}
tarball=
out=
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry=1 ;;
    --tar) tarball=${2:?--tar needs a file}; shift ;;
    -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "one OUT_DIR only" >&2; exit 2; }; out=$1 ;;
  esac
  shift
done
[ "$dry" = 1 ] || dry=0

start=$SECONDS
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
out=${out:-${OUT:-gpu_check_out}}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
# The checkout is importable even where `pip install -e .` was skipped (scripts/*.py are run by path).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
steps_wanted=${STEPS:-all}
read -r -a bench_extra <<<"${BENCH_ARGS:-}"

if [ "$dry" = 1 ]; then
  # Tiny sizes on the CPU. The compiled CPU kernel of Proxy Norm is switched off: on a GPU "fused" runs the same
  # plain ATen ops, and building the kernel would cost ~40 s on a fresh CI machine.
  export G16NET_CPU_KERNEL=0
  # One thread: at batch 2 a second one barely helps, and beside other jobs on 2 cores, OpenMP threads spinning for
  # a descheduled peer made this dry run 3x slower (148 s against 49 s; one finetune epoch 45x).
  export OMP_NUM_THREADS=1
  dev=cpu trainer=cpu hi=32 lo=32 batch=2 pbatch=2 warmup=1 steps=1 repeats=1 pwarm=1 psteps=1
  budget=${BUDGET_S:-900}
else
  dev=cuda trainer=gpu hi=224 lo=160 batch=128 pbatch=64 warmup=2 steps=8 repeats=3 pwarm=3 psteps=5
  budget=${BUDGET_S:-450}
fi
reserve=15  # seconds kept for the summary, which must run whatever happened before

# Proxy Norm implementations: "fused" (on a GPU: plain ATen ops, as the CPU kernel does not apply there) and
# "triton" (the fused Triton kernel) once g16net.efficiency.bench knows it. The dry run measures fused only: Triton
# needs a GPU (its interpreter runs at numpy speed); tests/test_gpu_check.py covers the two-implementation summary.
impls=fused
if [ "$dry" = 0 ]; then
  if "$py" -c 'import sys, g16net.efficiency.bench as b; sys.exit("triton" not in b.PN_IMPLS)' 2>/dev/null; then
    impls=fused,triton
  else
    echo "triton: not in g16net.efficiency.bench.PN_IMPLS (or it does not import): Proxy Norm runs as fused only"
  fi
fi

failed=()
printf 'step\trc\tseconds\tcommand\n' >"$out/steps.tsv"

# run_step NAME CAP_S CMD...: CMD's stdout and stderr go to NAME.log; it gets min(CAP_S, time left) seconds. A
# failure is recorded and reported at the end, never fatal: later steps still tell us something.
run_step() {
  local name=$1 cap=$2 rc=0 t0=$SECONDS left shown
  shift 2
  shown="$*"
  shown=${shown//$'\n'/ }  # one line per step in steps.tsv (the versions step's command is a Python program)
  shown=${shown:0:400}
  case ",$steps_wanted," in ",all," | *",$name,"*) ;; *) return 0 ;; esac
  rm -f -- "$out/$name".*  # a failed step must not leave an earlier run's CSV or table for the summary to read
  local keep=$reserve
  [ "$name" != summary ] || keep=$((-reserve))  # the summary may use the reserve, and its slack
  left=$((budget - (SECONDS - start) - keep))
  if [ "$left" -lt 10 ]; then
    note "$name" "not run: the ${budget} s budget is spent"
    return 0
  fi
  [ "$cap" -le "$left" ] || cap=$left
  echo "== $name (limit ${cap} s): $shown"
  timeout -k 10 "$cap" "$@" >"$out/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$shown" >>"$out/steps.tsv"
  if [ $rc -eq 0 ]; then
    echo "   ok in $((SECONDS - t0)) s"
  else
    [ $rc -ne 124 ] || echo "   timed out after ${cap} s"
    echo "   FAILED (exit $rc) in $((SECONDS - t0)) s; last lines of $name.log:"
    tail -n 15 "$out/$name.log" | sed 's/^/   | /'
    failed+=("$name")
  fi
}

# note NAME WHY: a step that did not run; it counts as failed, so an incomplete check never reads as a pass.
note() {
  printf '%s\t-\t0\t%s\n' "$1" "$2" >>"$out/steps.tsv"
  echo "== $1: $2"
  failed+=("$1")
}

# skip NAME WHY: a step that does not apply here (dry run); recorded, not a failure.
skip() {
  case ",$steps_wanted," in ",all," | *",$1,"*) ;; *) return 0 ;; esac
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$out/steps.tsv"
  echo "== $1: skipped ($2)"
}

# --- machine facts -------------------------------------------------------------------------------------------
if [ "$dry" = 1 ] && ! command -v nvidia-smi >/dev/null; then
  skip nvidia_smi "no nvidia-smi on this machine"
else
  run_step nvidia_smi 30 nvidia-smi
fi
versions_py='
import platform, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
for name in ("triton", "torchvision", "timm", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf", "numpy"):
    try:
        print(name, getattr(__import__(name), "__version__", "?"))
    except Exception as err:
        print(name, "MISSING:", err)
import g16net, g16net.efficiency.bench
print("g16net", g16net.__file__, "pn impls", ",".join(g16net.efficiency.bench.PN_IMPLS))
print("threads", torch.get_num_threads())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
else:
    print("gpu none")
    sys.exit(sys.argv[1] == "cuda")  # a GPU check without a GPU must say so at once
'
run_step versions 60 "$py" -c "$versions_py" "$dev"
# Environment facts, allow-listed (no tokens or keys leave the machine); expanded by the inner bash.
# shellcheck disable=SC2016
run_step env 30 bash -c 'uname -a; echo "cpus $(nproc)"; free -g 2>/dev/null; df -h . 2>/dev/null | tail -n 1;
  env | grep -E "^(CUDA|NVIDIA|NCCL|TORCH|TORCHINDUCTOR|TRITON|PYTORCH|PYTHON|OMP|MKL|G16NET|LD_LIBRARY_PATH|PATH|VIRTUAL_ENV)" |
  grep -v -i -E "KEY|TOKEN|SECRET|PASSWORD" | sort'

# --- correctness first: the speed numbers mean nothing if the GPU path computes something else ----------------
# addopts cleared: one process (no pytest-xdist workers sharing the GPU, which the machine may not even have)
run_step numerics 150 "$py" -m pytest tests -k cuda -o addopts= -m "not slow" -p no:cacheprovider -q \
  --junitxml "$out/numerics.xml"
run_step smoke 150 "$py" -m g16net.train debug=smoke "trainer=$trainer" logger=csv overwrite=true \
  "hydra.run.dir=$out/smoke"

# --- where a training step's time goes ------------------------------------------------------------------------
IFS=, read -r -a impl_list <<<"$impls"
for impl in "${impl_list[@]}"; do
  run_step "profile_$impl" 90 "$py" scripts/profile_step.py --device "$dev" --res "$lo" --batch "$pbatch" \
    --warmup "$pwarm" --steps "$psteps" --norm ln_pn --pn-impl "$impl" --precision bf16 --out "$out/profile_$impl.txt"
done

# --- throughput and peak memory -------------------------------------------------------------------------------
# bench's ratio column divides by a model at the same resolution; the summary does the 224-vs-160 ratio.
bench() {  # bench STEP CAP_S ARGS...: one bench call writing STEP.csv
  local name=$1 cap=$2
  shift 2
  run_step "$name" "$cap" "$py" -m g16net.bench --device "$dev" --precision bf16 --batch "$batch" \
    --warmup "$warmup" --steps "$steps" "$@" --csv "$out/$name.csv" "${bench_extra[@]}"
}
bench bench_timm_eager 120 --models '' --peers efficientnet_b0 --res "$hi" --modes train,infer \
  --layout nchw,nhwc --compile 0 --repeats "$repeats"
bench bench_g16_eager 240 --models g16_efficientnet_b0 --norms ln,ln_pn --pn-impl "$impls" --base ln \
  --peers efficientnet_b0 --res "$lo" --modes train,infer --layout nchw,nhwc --compile 0 --repeats "$repeats"
if [ "$dry" = 1 ]; then
  for s in bench_g16_lnpn_compiled bench_timm_compiled bench_g16_ln_compiled; do
    skip "$s" "dry run: torch.compile takes minutes on a CPU"
  done
else
  # One repeat (a GPU's speed hardly drifts; each repeat would compile again), 2 warmup steps (the first compiles).
  cmodes=${COMPILE_MODES:-train} clayouts=${COMPILE_LAYOUTS:-nchw}
  bench bench_g16_lnpn_compiled 240 --models g16_efficientnet_b0 --norms ln_pn --pn-impl "$impls" --peers '' \
    --res "$lo" --modes "$cmodes" --layout "$clayouts" --compile 1 --repeats 1 --warmup 2 --steps 10
  bench bench_timm_compiled 150 --models '' --peers efficientnet_b0 --res "$hi" --modes "$cmodes" \
    --layout "$clayouts" --compile 1 --repeats 1 --warmup 2 --steps 10
  bench bench_g16_ln_compiled 150 --models g16_efficientnet_b0 --norms ln --peers '' --res "$lo" \
    --modes "$cmodes" --layout "$clayouts" --compile 1 --repeats 1 --warmup 2 --steps 10
fi

# --- the two target ratios --------------------------------------------------------------------------------------
run_step summary 30 "$py" scripts/gpu_summary.py --pn-impls "$impls" --out "$out/summary.md" \
  --peer "$out/bench_timm_eager.csv" "$out/bench_timm_compiled.csv" \
  --g16 "$out/bench_g16_eager.csv" "$out/bench_g16_lnpn_compiled.csv" "$out/bench_g16_ln_compiled.csv"

echo
[ ! -f "$out/summary.md" ] || cat "$out/summary.md"
echo "total $((SECONDS - start)) s; files in $out"
if [ -n "$tarball" ]; then
  tar -czf "$tarball" -C "$(dirname "$out")" "$(basename "$out")" && echo "packed into $tarball"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
