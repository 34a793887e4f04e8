# Shared by the launch benchmarks (bench-jobs.sh, bench-ssh.sh): the training command prints
# `CMD <time>` first and train.py's first line is {"event": "start", "time": …}, so a launch splits
# into reaching the command and torchrun's own start-up. Source it; needs python3.

# The job's command: the time stamp, then torchrun on train.py (a job's env contract).
# shellcheck disable=SC2016
STAMP='python3 -c "import time; print(\"CMD\", time.time())"'
# shellcheck disable=SC2016
TORCHRUN='python3 -m torch.distributed.run --nnodes=$NNODES --node-rank=$NODE_RANK --nproc-per-node=$NPROC_PER_NODE --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT train.py'

now() { python3 -c 'import time; print(time.time())'; }

# times LOG... → "CMDSTART FIRSTLINE": the latest of the nodes' command-start and first-line times.
times() {
  python3 - "$@" <<'PY'
import json, sys
cmd, first = [], []
for f in sys.argv[1:]:
    seen = False
    for line in open(f, errors="replace"):
        line = line.strip()
        if line.startswith("CMD "): cmd.append(float(line.split()[1]))
        if line.startswith('{"event": "start"') and not seen:
            first.append(json.loads(line)["time"]); seen = True
print(max(cmd), max(first))
PY
}

# summarize CAPSTAN_LABEL HAND_LABEL GOALS < rows ("capstan|hand T0 CMDSTART FIRSTLINE" lines):
# medians of each part, side by side, and the ratio. GOALS=1 prints the trainer issue's goals.
summarize() {
  python3 -c '
import statistics, sys
labels = {"capstan": sys.argv[1], "hand": sys.argv[2]}
goals = sys.argv[3] == "1"
runs = {"capstan": [], "hand": []}
for line in sys.stdin:
    who, t0, cmd, first = line.split()
    runs[who].append((float(cmd) - float(t0), float(first) - float(cmd), float(first) - float(t0)))
med = {w: [statistics.median(x[i] for x in r) * 1000 for i in range(3)] for w, r in runs.items()}
for w in ("capstan", "hand"):
    m = med[w]
    print(f"  {labels[w]:30s} to the command {m[0]:5.0f} ms + torchrun start-up {m[1]:5.0f} ms = first line {m[2]:5.0f} ms (median; totals: {sorted(round(x[2]*1000) for x in runs[w])})")
c, h = med["capstan"], med["hand"]
print(f"  overhead to reach the command: {c[0]-h[0]:.0f} ms" + (" (goal < 1000 ms)" if goals else "") + f"; first line {c[2]:.0f} vs {h[2]:.0f} ms = {c[2]/h[2]:.2f}x" + (" (goal <= 1.10x)" if goals else ""))' "$@"
}

last_job() { "$CAPSTAN" jobs --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])'; }

# compare_launches RUNS SPEC CAPSTAN_LABEL HAND_LABEL GOALS: RUNS interleaved pairs of
# `$CAPSTAN launch SPEC --cluster warm` and the caller's `by_hand` (which writes
# $work/hand-0.log and $work/hand-1.log), then `summarize`. Needs $CAPSTAN, $CAPSTAN_HOME, $work.
compare_launches() {
  local runs=$1 spec=$2 rows=() t0 job
  for _ in $(seq "$runs"); do
    t0=$(now)
    "$CAPSTAN" launch "$spec" --cluster warm --quiet >/dev/null
    job=$(last_job)
    rows+=("capstan $t0 $(times "$CAPSTAN_HOME/jobs/$job/logs/node-0.log" "$CAPSTAN_HOME/jobs/$job/logs/node-1.log")")
    t0=$(now)
    by_hand
    rows+=("hand $t0 $(times "$work/hand-0.log" "$work/hand-1.log")")
  done
  printf '%s\n' "${rows[@]}" | summarize "$3" "$4" "$5"
}
