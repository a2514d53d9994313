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
ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
    python jobs/sfbd.py --config toy2d --run-dir "$run_dir" --set iterations=1 \
    --set train.pretrain_kimg=20 --set train.refit_kimg=20 --set eval.num_samples=2000
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
