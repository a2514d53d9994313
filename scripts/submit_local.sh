#!/usr/bin/env bash
# `ray job submit` end to end on this machine: start a Ray head of its own (`ray start --head`
# with its own ports and temp dir), submit a job with --working-dir, wait for it, check the run
# directory, stop that head. Only that head: other Ray clusters on the machine are left alone.
#     bash scripts/submit_local.sh                         the toy (--config toy2d)
#     bash scripts/submit_local.sh --bare                  the bare job: no --config, no --run-dir
#     bash scripts/submit_local.sh --bare --runtime-env    the same with runtime_env.yaml
#     SFBD_SUBMIT_VENV=/path/to/venv bash scripts/submit_local.sh ...   another Python env
# Run it after `make test` or `make run` built .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bare=0
runtime_env=()
for arg in "$@"; do
    case "$arg" in
        --bare) bare=1 ;;
        --runtime-env) runtime_env=(--runtime-env runtime_env.yaml) ;;
        *) echo "submit_local: unknown option $arg; allowed: --bare, --runtime-env" >&2; exit 2 ;;
    esac
done
# The head and its jobs run `python` from this environment (a venv with only Ray in it shows
# what --runtime-env installs).
export PATH="$(realpath "${SFBD_SUBMIT_VENV:-.venv}")/bin:$PATH"
export RAY_AUTH_MODE=token           # Ray 2.60's token authentication for local clusters
temp_dir="/tmp/ray-submit-$$"        # in every process of this head's command line
dashboard_port=${SFBD_SUBMIT_DASHBOARD_PORT:-8275}
if [ "$bare" = 1 ]; then
    # The job inherits the head's environment: the bare job's run goes to
    # $SFBD_STORAGE/fashion-mnist-cpu (a CPU-only head), made small to take about 2 minutes
    # (no classifier to train, no baselines).
    export SFBD_STORAGE="$PWD/runs/submit-bare"
    run_dir="$SFBD_STORAGE/fashion-mnist-cpu"
    job=(python jobs/sfbd.py --set iterations=1 --set data.limit=1000
         --set train.pretrain_kimg=1 --set train.refit_kimg=1 --set train.checkpoint_kimg=1
         --set train.log_kimg=1 --set eval.num_samples=64 --set eval.grid=4
         --set eval.metric=swd --set eval.feature_net= --baselines none)  # no classifier
    rm -rf "$SFBD_STORAGE"
else
    run_dir="$PWD/runs/submit-toy"
    job=(python jobs/sfbd.py --config toy2d --run-dir "$run_dir" --set iterations=1
         --set train.pretrain_kimg=20 --set train.refit_kimg=20 --set eval.num_samples=2000)
    rm -rf "$run_dir"
fi

stop_head() {
    # `ray stop` would stop every Ray process of this user; end this head's alone, by pid.
    local pids
    pids=$(pgrep -f -- "$temp_dir" | grep -vx "$$" || true)
    [ -z "$pids" ] || kill $pids 2>/dev/null || true
    sleep 3
    pids=$(pgrep -f -- "$temp_dir" | grep -vx "$$" || true)
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    rm -rf "$temp_dir"
}
trap stop_head EXIT
ray start --head --num-cpus=2 --temp-dir="$temp_dir" --port="${SFBD_SUBMIT_PORT:-6390}" \
    --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" \
    --ray-client-server-port=9911 --dashboard-agent-listen-port=52375 \
    --disable-usage-stats
address="http://127.0.0.1:$dashboard_port"

# Submits a job and waits for it; its logs are in $logs afterwards.
submit() {
    local job_id="sfbd-$(date +%s)-$RANDOM"
    # The head's job agent can take a while to come up on a loaded machine ("No available
    # agent to submit job"): a refused submission creates no job, so it is retried.
    for attempt in $(seq 1 24); do
        if ray job submit --address "$address" --submission-id "$job_id" --no-wait \
            --working-dir . "${runtime_env[@]}" -- "$@"; then
            break
        fi
        [ "$attempt" -lt 24 ] || { echo "submit_local: job not accepted" >&2; exit 1; }
        sleep 5
    done
    ray job logs --address "$address" --follow "$job_id"
    logs=$(ray job logs --address "$address" "$job_id" 2>&1) || true
    # Read the status into a variable first: `grep -q` in a pipe under pipefail can kill the
    # writer with SIGPIPE and fail a job that succeeded.
    status=$(ray job status --address "$address" "$job_id" 2>&1) || true
    echo "$status"
    if ! grep -qi "succeeded" <<<"$status"; then
        echo "submit_local: job $job_id did not succeed" >&2
        exit 1
    fi
}

submit "${job[@]}"
if [ "$bare" = 1 ]; then
    grep -q "config fashion-mnist-cpu: the cluster has no GPU" <<<"$logs" \
        || { echo "submit_local: the bare job did not choose fashion-mnist-cpu" >&2; exit 1; }
    # Without SFBD_STORAGE: where the driver and a worker import sfbd from (the working
    # directory's copy), and the default run directory (outside that copy).
    submit env -u SFBD_STORAGE python -c '
import os, ray, sfbd
from sfbd.defaults import default_run_dir, working_dir_copy
ray.init()
worker = ray.get(ray.remote(lambda: __import__("sfbd").__file__).remote())
copy, where = working_dir_copy(os.getcwd()), default_run_dir("fashion-mnist-cpu").where
print("driver sfbd:", sfbd.__file__, "\nworker sfbd:", worker, "\ndefault run dir:", where)
assert copy and sfbd.__file__.startswith(str(copy)) and "working_dir_files" in worker
assert not where.startswith(str(copy))
'
fi
python - "$run_dir" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
state = json.loads((run / "state.json").read_text())
assert state["finished"], state
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
assert [r["iteration"] for r in rows] == [0, 1], rows
assert (run / "checkpoints" / "iter_001.pt").is_file()
metric = rows[0]["metric"]
print(f"submit_local: OK, {run}: {metric} {[round(r[metric], 4) for r in rows]}")
PY
