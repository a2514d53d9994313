#!/usr/bin/env bash
# `ray job submit` end to end on this machine: start a Ray head (`ray start --head`), submit
# the toy job to it with --working-dir, wait for it, check the run directory, stop the head.
#     bash scripts/submit_local.sh            (after `make test` or `make run` built .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"   # the head's jobs run `python` from this environment
export RAY_AUTH_MODE=token           # Ray 2.60's token authentication for local clusters
run_dir="$PWD/runs/submit-toy"
rm -rf "$run_dir"
ray start --head --num-cpus=2 --dashboard-host=127.0.0.1 --dashboard-port=8265 \
    --disable-usage-stats
trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
address=http://127.0.0.1:8265
job_id="sfbd-toy-$(date +%s)"
# The head's job agent can take a while to come up on a loaded machine ("No available agent
# to submit job"): a refused submission creates no job, so it is retried.
for attempt in $(seq 1 24); do
    if ray job submit --address "$address" --submission-id "$job_id" --no-wait --working-dir . -- \
        python jobs/sfbd.py --config toy2d --run-dir "$run_dir" --set iterations=1 \
        --set train.pretrain_kimg=20 --set train.refit_kimg=20 --set eval.num_samples=2000; then
        break
    fi
    [ "$attempt" -lt 24 ] || { echo "submit_local: job not accepted" >&2; exit 1; }
    sleep 5
done
ray job logs --address "$address" --follow "$job_id"
# Read the status into a variable first: `grep -q` in a pipe under pipefail can kill the
# writer with SIGPIPE and fail a job that succeeded.
status=$(ray job status --address "$address" "$job_id" 2>&1) || true
echo "$status"
if ! grep -qi "succeeded" <<<"$status"; then
    echo "submit_local: job $job_id did not succeed" >&2
    exit 1
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
print(f"submit_local: OK, {run}: swd_true {[round(r['swd_true'], 4) for r in rows]}")
PY
