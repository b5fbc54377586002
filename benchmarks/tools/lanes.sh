#!/usr/bin/env bash
# Run a queue of long benchmark commands on this machine's cores, one torch thread per lane.
#
#   benchmarks/tools/lanes.sh QUEUE LANE...     e.g. lanes.sh /work/q/queue.txt laneA laneB
#
# QUEUE is a text file of shell commands, one per line (blank lines and '#' lines skipped).
# Each LANE is a background worker that pops the first line (under flock, so lanes never take
# the same line), runs it, and logs "start"/"end rc=N" with the time to <QUEUE dir>/<LANE>.log
# and its output to <LANE>.out. Lines may be appended to QUEUE while the lanes run. A lane
# stops when the queue is empty. The commands should resume (every `ipd sweep` does), so after
# a restart put back the lines that have a "start" but no "end" in the logs and start again.
#
# Each lane's command runs with OMP_NUM_THREADS=1: two lanes with two threads each on a
# 2-core machine run about 10x slower, not 2x (benchmarks/results/concurrent_runs.md).
#
#   benchmarks/tools/lanes.sh --requeue OLD_QUEUE NEW_QUEUE
#
# writes NEW_QUEUE for a restart after the lanes were killed: each OLD_QUEUE lane log's command
# that has a "start" and no "end" (a run in flight), then what is left in OLD_QUEUE.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi

if [[ $1 == --requeue ]]; then
    [[ $# -eq 3 && -f $2 ]] || { echo "lanes.sh --requeue: needs OLD_QUEUE (a file) NEW_QUEUE" >&2; exit 2; }
    [[ ! -e $3 ]] || { echo "lanes.sh --requeue: $3 exists; not overwritten" >&2; exit 2; }
    old=$(dirname "$(realpath "$2")")
    mkdir -p "$(dirname "$3")"
    {
        for log in "$old"/*.log; do  # its last start/end line, when it is a start
            [[ -f $log ]] || continue
            { grep -E '^[^ ]+ (start|end rc=[0-9]+) ' "$log" || true; } | tail -n 1 | sed -n 's/^[^ ]* start //p'
        done
        cat "$2"
    } > "$3.tmp"
    mv "$3.tmp" "$3"
    echo "lanes.sh: $(grep -c -v -e '^[[:space:]]*$' -e '^[[:space:]]*#' "$3") commands in $3"
    exit 0
fi
queue=$(realpath "$1")
shift
[[ -f "$queue" ]] || { echo "lanes.sh: no queue file $queue" >&2; exit 2; }
dir=$(dirname "$queue")

pop() {  # print the queue's first command line and remove it, atomically
    (
        flock 9
        local n line=""
        n=$(grep -n -m1 -v -e '^[[:space:]]*$' -e '^[[:space:]]*#' "$queue" | cut -d: -f1 || true)
        if [[ -n "$n" ]]; then
            line=$(sed -n "${n}p" "$queue")
            sed "${n}d" "$queue" > "$queue.tmp" && mv "$queue.tmp" "$queue"
        fi
        printf '%s' "$line"
    ) 9> "$queue.lock"
}

lane() {
    local name=$1 cmd rc
    while cmd=$(pop) && [[ -n "$cmd" ]]; do
        echo "$(date -u +%FT%TZ) start $cmd" >> "$dir/$name.log"
        rc=0
        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 bash -c "$cmd" >> "$dir/$name.out" 2>&1 || rc=$?
        echo "$(date -u +%FT%TZ) end rc=$rc $cmd" >> "$dir/$name.log"
    done
    echo "$(date -u +%FT%TZ) queue empty" >> "$dir/$name.log"
}

for name in "$@"; do
    lane "$name" &
    echo "lane $name: pid $!, log $dir/$name.log"
done
