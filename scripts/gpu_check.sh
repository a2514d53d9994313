#!/usr/bin/env bash
# One-command GPU check (docs/gpu.md): on one GPU with no network, in at most 8 minutes,
#   1. the environment: python, torch with CUDA, Ray, the packages sfbd imports;
#   2. a local Ray cluster, started once for the two measured parts;
#   3. `sfbd benchmark` with DDPM++ eager and compiled: the Ray Data denoise stage and the
#      Ray Train loop each against the plain PyTorch loop (OUTDIR/benchmark.json);
#   4. the fashion-mnist-gpu preset end to end, shrunk to fit (OUTDIR/preset/: metrics rows,
#      state, sample grids), on Fashion-MNIST's gz files carried with the command;
#   5. OUTDIR/summary.json: every figure against its target, met / not met.
# One line is printed per part; each part's output is in OUTDIR/<part>.log.
#     bash scripts/gpu_check.sh OUTDIR [--data DIR] [--dry-run]
# --data: the folder of the four Fashion-MNIST gz files (default $SFBD_FASHION_MNIST, else
# .gpu-data/fashion-mnist). --dry-run, and any machine without a CUDA device: the same parts
# at tiny sizes on the CPU, with "dry_run": true in the summary.
# Budgets in seconds (`timeout` ends a part that overruns): SFBD_GPU_CHECK_ENV_S (120),
# SFBD_GPU_CHECK_RAY_S (90), SFBD_GPU_CHECK_BENCHMARK_S (230), SFBD_GPU_CHECK_PRESET_S (240)
# and the whole check SFBD_GPU_CHECK_TOTAL_S (480): the preset gets at most what is left of
# it, less 20 s for the summary. A dry run's defaults are 3x these (a busy shared CPU).
# Python: $SFBD_PYTHON, else .venv/bin/python, else python3. Exit code 0 when every part ran
# (targets met or not), 1 when one failed or ran out of time (the summary is still written),
# 2 for bad input or a missing package.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."
root=$PWD

fail() { echo "gpu_check: $*" >&2; exit 2; }

outdir=""
dry=0
data=${SFBD_FASHION_MNIST:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --data) [ $# -ge 2 ] || fail "--data needs a folder"; data=$2; shift ;;
        --data=*) data=${1#--data=} ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) fail "unknown option $1; allowed: --data DIR, --dry-run" ;;
        *) [ -z "$outdir" ] || fail "one OUTDIR only (got $outdir and $1)"; outdir=$1 ;;
    esac
    shift
done
[ -n "$outdir" ] || fail "usage: scripts/gpu_check.sh OUTDIR [--data DIR] [--dry-run]"
# Paths given are relative to where the script was called from.
[[ "$outdir" = /* ]] || outdir=$here/$outdir
[ -z "$data" ] || [[ "$data" = /* ]] || data=$here/$data

if [ -n "${SFBD_PYTHON:-}" ]; then py=$SFBD_PYTHON
elif [ -x .venv/bin/python ]; then py=$root/.venv/bin/python
else py=python3; fi
command -v "$py" >/dev/null || fail "python: '$py' not found (set SFBD_PYTHON)"

# The data: four gz files, checked before any work.
if [ -z "$data" ]; then
    data=.gpu-data/fashion-mnist
    # A dry run on a machine with Debian's package needs no copy.
    if [ ! -d "$data" ] && [ "$dry" = 1 ] && [ -d /usr/share/datasets/fashion-mnist ]; then
        data=/usr/share/datasets/fashion-mnist
    fi
fi
[ -d "$data" ] || fail "--data: folder '$data' does not exist; copy Fashion-MNIST's four gz files there (docs/gpu.md)"
data=$(cd "$data" && pwd)
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$data/$f.gz" ] || fail "--data: $data/$f.gz is missing; allowed: a folder with the four Fashion-MNIST gz files"
done

for v in ENV RAY BENCHMARK PRESET TOTAL; do
    b=$(printenv "SFBD_GPU_CHECK_${v}_S" || true)
    [ -z "$b" ] || [[ "$b" =~ ^[1-9][0-9]*$ ]] \
        || fail "SFBD_GPU_CHECK_${v}_S: '$b'; must be a whole number of seconds > 0"
done
budget_env=${SFBD_GPU_CHECK_ENV_S:-120}

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
rm -rf "$outdir/preset" "$outdir/summary.json" "$outdir/benchmark.json"

# Ray: one local cluster for the parts (never RAY_ADDRESS, nor a cluster `ray start` began
# here), held by a process of this script, its files under a short scratch folder (Ray's
# socket paths must stay short) whose path marks its processes: only they are ended.
unset RAY_ADDRESS
scratch=$(mktemp -d /tmp/sfbdgc.XXXXXX)
export RAY_TMPDIR=$scratch
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0
# The head writes its token to ~/.ray/auth_token when there is none; the parts read it there.
export RAY_AUTH_MODE=token
head_pid=""

stop_ray() {
    local pids
    [ -z "$head_pid" ] || kill "$head_pid" 2>/dev/null || true  # ray.shutdown() on SIGTERM
    for _ in $(seq 1 15); do
        pids=$(pgrep -f -- "$scratch" | grep -vx "$$" || true)
        [ -n "$pids" ] || return 0
        sleep 1
    done
    kill -9 $pids 2>/dev/null || true
}
cleanup() { stop_ray; rm -rf "$scratch"; }
trap cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# elapsed T0_MS: seconds since T0_MS with one decimal
elapsed() { local d=$(( $(now_ms) - $1 )); printf '%d.%d' $(( d / 1000 )) $(( d % 1000 / 100 )); }
check_start=$(now_ms)

# run_part NAME BUDGET CMD...: runs CMD under `timeout`, output into OUTDIR/NAME.log; sets
# part_status (ok, timeout, failed) and part_seconds and records them for the summary.
run_part() {
    local name=$1 budget=$2 rc t0
    shift 2
    t0=$(now_ms)
    set +e
    timeout --kill-after=15 "$budget" "$@" >"$outdir/$name.log" 2>&1
    rc=$?
    set -e
    part_seconds=$(elapsed "$t0")
    case "$rc" in
        0) part_status=ok ;;
        124|137) part_status=timeout ;;
        *) part_status=failed ;;
    esac
    echo "$name $part_status $part_seconds $budget" >>"$scratch/parts"
    if [ "$part_status" != ok ]; then
        echo "gpu_check: $name $part_status (exit code $rc) after $part_seconds s; the end of $outdir/$name.log:"
        tail -n 15 "$outdir/$name.log" | sed 's/^/    /'
    fi
}

# 1. Environment (its own one-line error, exit 2, when something is missing).
t0=$(now_ms)
env_args=("$outdir" --mode-file "$scratch/mode")
[ "$dry" = 0 ] || env_args+=(--dry-run)
rc=0
env_line=$(timeout "$budget_env" "$py" -m sfbd.studies.gpu_check env "${env_args[@]}") || rc=$?
[ "$rc" != 124 ] || fail "environment: the check took over $budget_env s"
[ "$rc" = 0 ] || exit 2  # the check printed its one line
env_seconds=$(elapsed "$t0")
echo "environment ok $env_seconds $budget_env" >"$scratch/parts"
[ "$(cat "$scratch/mode")" = gpu ] || dry=1
echo "gpu_check: [1/5] environment: $env_line ($env_seconds s)"
if [ "$dry" = 1 ]; then
    # Inductor's C++ build of even a tiny network takes a minute on a loaded CPU: the dry run
    # takes the compiled code paths with torch.compile turned into a no-op. (Set before Ray
    # starts: its workers inherit the environment of the process that started it.)
    export TORCH_COMPILE_DISABLE=1
fi

# The GPU budgets fit the device machine's 8 minutes; a dry run on a shared CPU gets more room.
scale=1
[ "$dry" = 0 ] || scale=3
budget_ray=${SFBD_GPU_CHECK_RAY_S:-$((90 * scale))}
budget_bench=${SFBD_GPU_CHECK_BENCHMARK_S:-$((230 * scale))}
budget_preset=${SFBD_GPU_CHECK_PRESET_S:-$((240 * scale))}
budget_total=${SFBD_GPU_CHECK_TOTAL_S:-$((480 * scale))}

# 2. The cluster: started once, for both parts (a Ray start-up costs 10-70 s on a busy CPU).
t0=$(now_ms)
"$py" -m sfbd.studies.gpu_check head "$scratch/address" >"$outdir/ray.log" 2>&1 &
head_pid=$!
for _ in $(seq 1 "$budget_ray"); do
    [ ! -s "$scratch/address" ] || break
    kill -0 "$head_pid" 2>/dev/null || break
    sleep 1
done
ray_seconds=$(elapsed "$t0")
if [ -s "$scratch/address" ]; then
    address=$(cat "$scratch/address")
    echo "ray ok $ray_seconds $budget_ray" >>"$scratch/parts"
    echo "gpu_check: [2/5] ray: a local cluster at $address ($ray_seconds s)"
else
    address=""
    echo "ray failed $ray_seconds $budget_ray" >>"$scratch/parts"
    echo "gpu_check: [2/5] ray: did not start in $ray_seconds s; the end of $outdir/ray.log:"
    tail -n 15 "$outdir/ray.log" | sed 's/^/    /'
fi

# 3. The benchmark: DDPM++ at 32 px, eager and compiled; the Ray Data stage runs compiled.
if [ "$dry" = 1 ]; then
    bench=(--preset tiny --resolution 8 --channels 1 --num-images 32 --batch-size 16 --steps 2
           --train-steps 3 --train-batch-size 8 --threads 1)
else
    bench=(--preset ddpmpp-cifar10 --num-images 4096 --batch-size 512 --steps 8
           --train-steps 40 --train-batch-size 256 --cpus 2)
fi
# skip_part NAME BUDGET: a part that cannot run without the cluster.
skip_part() { part_status=skipped; part_seconds=0.0; echo "$1 skipped 0.0 $2" >>"$scratch/parts"; }
if [ -n "$address" ]; then
    run_part benchmark "$budget_bench" "$py" jobs/benchmark.py --address "$address" --compile \
        "${bench[@]}" --out "$outdir/benchmark.json" --work-dir "$scratch/benchmark"
else
    skip_part benchmark "$budget_bench"
fi
rm -rf "$scratch/benchmark"
bench_line=""
[ "$part_status" != ok ] || bench_line=$("$py" -m sfbd.studies.gpu_check benchmark-line "$outdir")
echo "gpu_check: [3/5] benchmark: $part_status in $part_seconds s${bench_line:+: $bench_line} -> $outdir/benchmark.json"

# 4. The preset end to end. As it is (3 iterations, 400 + 3 x 200 kimg) it does not fit next to
# the benchmark in 8 minutes: one iteration of fewer kimg, projected to the whole in the summary.
sets=("data.root=$data")
if [ "$dry" = 1 ]; then
    sets+=(iterations=1 data.limit=256 network.preset=tiny
           train.use_gpu=false train.num_workers=0 train.cpus_per_worker=1 train.threads=1
           train.batch_size=16 train.pretrain_kimg=0.048 train.refit_kimg=0.032
           train.warmup_kimg=0 train.ema_halflife_kimg=0.016 train.checkpoint_kimg=0.032
           train.log_kimg=0.016 denoise.steps=2 denoise.batch_size=128 denoise.cpus_per_actor=1
           denoise.threads=1 eval.num_samples=16 eval.batch_size=16 eval.steps=2 eval.grid=2
           eval.threads=1)
else
    sets+=(iterations=1 train.pretrain_kimg=50 train.refit_kimg=25)
fi
printf '%s\n' "${sets[@]}" >"$scratch/overrides"
set_args=()
for s in "${sets[@]}"; do set_args+=(--set "$s"); done
left=$(( budget_total - 20 - ($(now_ms) - check_start) / 1000 ))
[ "$left" -ge "$budget_preset" ] || budget_preset=$(( left > 10 ? left : 10 ))
if [ -n "$address" ]; then
    run_part preset "$budget_preset" "$py" jobs/sfbd.py --config fashion-mnist-gpu \
        --address "$address" --run-dir "$scratch/run" "${set_args[@]}"
else
    skip_part preset "$budget_preset"
fi
preset_status=$part_status
preset_seconds=$part_seconds
"$py" -m sfbd.studies.gpu_check collect "$scratch/run" "$outdir/preset" >/dev/null
rows=0
[ ! -f "$outdir/preset/metrics.jsonl" ] || rows=$(wc -l <"$outdir/preset/metrics.jsonl")
echo "gpu_check: [4/5] fashion-mnist-gpu end to end: $preset_status in $preset_seconds s, $rows metrics rows -> $outdir/preset/"

# 5. The summary.
summary_line=$("$py" -m sfbd.studies.gpu_check summary "$outdir" --parts "$scratch/parts" \
    --overrides "$scratch/overrides" --preset-wall "$preset_seconds")
echo "gpu_check: [5/5] summary: $summary_line -> $outdir/summary.json"
echo "gpu_check: done in $(elapsed "$check_start") s$([ "$dry" = 0 ] || echo ' (dry run)')"
grep -q -v ' ok ' "$scratch/parts" && exit 1
exit 0
