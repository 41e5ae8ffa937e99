#!/usr/bin/env bash
# Object storage benchmark: requests and throughput of vmvault on a real S3-compatible
# server (s3s-fs on 127.0.0.1) next to a local directory, in the same run.
#
#   1. builds the release binaries and a realistic image with mkimage.sh (GPT, EFI FAT,
#      ext4 from ~DATA_MIB MiB of real installed files, LOGICAL bytes long);
#   2. starts s3s-fs on a free port (its data under WORK);
#   3. for each repository (local directory, s3://): init, full backup, backup after
#      CHANGED_PAGES random 4 KiB page writes, restore of the last snapshot (verified with
#      cmp); page cache dropped before each step when run as root;
#   4. sync of the local repository to an S3 mirror;
#   5. reports wall time, throughput, requests (PUT/GET/LIST/DELETE, from --json) per GiB
#      stored and per GiB restored, next to what one object per chunk would cost
#      (one PUT per new chunk, one GET per chunk restored), and S3 throughput as a share
#      of local-directory throughput; writes s3.csv / s3.md to RESULTS.
#
# Environment knobs (defaults): DATA_MIB=1024 LOGICAL=8G CHANGED_PAGES=300 WORKROOT=/tmp
# RESULTS=<repo>/benches/results S3S_FS=s3s-fs (cargo install s3s-fs --version 0.14.1
# --features binary --locked).
# The server shares the machine's cores with vmvault, so on 2 cores the S3 figures are a
# floor: a real store does its hashing and disk writes elsewhere.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA_MIB=${DATA_MIB:-1024}
LOGICAL=${LOGICAL:-8G}
CHANGED_PAGES=${CHANGED_PAGES:-300}
WORKROOT=${WORKROOT:-/tmp}
RESULTS=${RESULTS:-$ROOT/benches/results}
S3S_FS=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}

for tool in jq bc sgdisk cmp "$S3S_FS"; do
    command -v "$tool" >/dev/null || { echo "s3.sh: $tool is missing" >&2; exit 1; }
done

WORK=$(mktemp -d "$WORKROOT/vmvault-s3.XXXXXX")
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "s3: $*" >&2; }

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p vmvault -p vmvault-benches --bins)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
VMVAULT_BIN=$TARGET_DIR/release/vmvault
IMG_TOOL=$TARGET_DIR/release/img_tool
STORE_READ=$TARGET_DIR/release/store_read

COLD=yes
drop_caches() {
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then COLD=no; fi
}

# --- the server -----------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/s3/bench"
"$S3S_FS" --host 127.0.0.1 --port "$PORT" --access-key benchkey --secret-key benchsecret \
    "$WORK/s3" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true
export VMVAULT_PASSWORD=bench

# --- the image ------------------------------------------------------------------------
IMG=$WORK/disk.img
log "building a $LOGICAL image with $DATA_MIB MiB of real files"
"$ROOT/benches/mkimage.sh" "$IMG" "$LOGICAL" "$DATA_MIB" "$WORK" >/dev/null
IMG_V1=$WORK/disk-v1.img
cp --sparse=always "$IMG" "$IMG_V1"

CSV=$RESULTS/s3.csv
mkdir -p "$RESULTS"
echo "backend,step,wall_s,bytes,throughput_mib_s,put,get,list,delete,stored_bytes,chunks,server_cpu_s,peak_rss_kib" >"$CSV"
LAST_CHUNKS=0
server_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
TICK=$(getconf CLK_TCK)

# step NAME BACKEND BYTES_FIELD -- vmvault args...: runs one --json step, appends a row.
step() {
    local backend=$1 name=$2 repo=$3 cache=$4
    shift 4
    drop_caches
    local t0 t1 out c0 c1
    c0=$(server_ticks)
    t0=$(date +%s.%N)
    out=$(VMVAULT_CACHE_DIR=$cache /usr/bin/time -f %M -o "$WORK/rss" "$VMVAULT_BIN" --json -r "$repo" "$@")
    t1=$(date +%s.%N)
    c1=$(server_ticks)
    local wall bytes put get list del stored chunks
    wall=$(echo "$t1 - $t0" | bc -l)
    case $name in
    restore*) bytes=$(jq '[.disks[].data_bytes] | add' <<<"$out"); stored=0
        chunks=$LAST_CHUNKS ;;
    sync*) bytes=$(jq .bytes_copied <<<"$out"); stored=$bytes; chunks=0 ;;
    *) bytes=$(jq .read_bytes <<<"$out"); stored=$(jq .stored_bytes <<<"$out")
        chunks=$(jq .new_chunks <<<"$out"); LAST_CHUNKS=$(jq .chunks <<<"$out") ;;
    esac
    case $name in
    sync*) put=$(jq .destination_requests.put <<<"$out"); get=$(jq .source_requests.get <<<"$out")
        list=$(jq '.destination_requests.list + .source_requests.list' <<<"$out")
        del=$(jq '.destination_requests.delete + .source_requests.delete' <<<"$out") ;;
    *) put=$(jq .requests.put <<<"$out"); get=$(jq .requests.get <<<"$out")
        list=$(jq .requests.list <<<"$out"); del=$(jq .requests.delete <<<"$out") ;;
    esac
    local rate
    rate=$(echo "$bytes / 1048576 / $wall" | bc -l)
    local server_cpu=0
    [[ $backend == s3 ]] && server_cpu=$(echo "($c1 - $c0) / $TICK" | bc -l)
    printf '%s,%s,%.2f,%s,%.1f,%s,%s,%s,%s,%s,%s,%.2f,%s\n' "$backend" "$name" "$wall" "$bytes" \
        "$rate" "$put" "$get" "$list" "$del" "$stored" "$chunks" "$server_cpu" "$(cat "$WORK/rss")" >>"$CSV"
    log "$backend $name: ${wall}s"
}

run_backend() {
    local backend=$1 repo=$2 cache=$WORK/cache-$1
    cp --sparse=always "$IMG_V1" "$IMG"
    "$VMVAULT_BIN" -q -r "$repo" init
    step "$backend" "full backup" "$repo" "$cache" backup --vm bench "$IMG"
    "$IMG_TOOL" scribble "$IMG" "$CHANGED_PAGES" 42 >/dev/null
    step "$backend" "backup after changes" "$repo" "$cache" backup --vm bench "$IMG"
    rm -f "$WORK/restored.img"
    step "$backend" "restore" "$repo" "$cache" restore latest --target "$WORK/restored.img"
    cmp "$IMG" "$WORK/restored.img"
    rm -f "$WORK/restored.img"
}

run_backend local "$WORK/local-repo"
run_backend s3 "s3://bench/repo"
# The store's own read bound: every pack read whole, 8 at a time, nothing decoded.
drop_caches
S3_READ=$("$STORE_READ" s3://bench/repo 8 | jq .mib_per_s)
drop_caches
LOCAL_READ=$("$STORE_READ" "$WORK/local-repo" 8 | jq .mib_per_s)
VMVAULT_CACHE_DIR=$WORK/cache-local "$VMVAULT_BIN" -q -r s3://bench/mirror init --mirror-of "$WORK/local-repo"
step s3 "sync local to s3" "$WORK/local-repo" "$WORK/cache-local" sync --to s3://bench/mirror

# --- report -----------------------------------------------------------------------------
MD=$RESULTS/s3.md
{
    echo "# Object storage: requests and throughput"
    echo
    echo "Generated by \`benches/s3.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores, page cache dropped: $COLD."
    echo "Image: $LOGICAL logical, $DATA_MIB MiB of real files (GPT, EFI FAT, ext4); then $CHANGED_PAGES random 4 KiB page writes."
    echo "Server: s3s-fs on 127.0.0.1, sharing the cores with vmvault."
    echo
    echo "| repository | step | wall s | MiB/s | PUT | GET | LIST | DELETE | stored MiB | server CPU s | peak RSS MiB |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    tail -n +2 "$CSV" | while IFS=, read -r b s w by r p g l d st ch sc rss; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %s | %.0f |\n' "$b" "$s" "$w" "$r" "$p" "$g" "$l" "$d" \
            "$(echo "$st / 1048576" | bc -l)" "$sc" "$(echo "$rss / 1024" | bc -l)"
    done
    echo
    awk -F, '
        $1 == "s3" && $2 == "full backup" { put = $6; stored = $10; chunks = $11 }
        $1 == "s3" && $2 == "restore" { get = $7; restored = $4; rchunks = $11 }
        $1 == "s3" { s3[$2] = $5 } $1 == "local" { loc[$2] = $5 }
        END {
            gib = 1024 * 1024 * 1024
            printf "Full backup to S3: %.1f PUT per GiB stored (%.2f per 8 MiB; target <= 1); one object per chunk would need %.0f PUT per GiB.\n\n", put / (stored / gib), put / (stored / (8 * 1048576)), chunks / (stored / gib)
            printf "Restore from S3: %.1f GET per GiB restored; one object per chunk would need %.0f.\n\n", get / (restored / gib), rchunks / (restored / gib)
            printf "S3 throughput as a share of local-directory throughput: full backup %.0f%%, backup after changes %.0f%%, restore %.0f%% (target >= 70%%).\n", 100 * s3["full backup"] / loc["full backup"], 100 * s3["backup after changes"] / loc["backup after changes"], 100 * s3["restore"] / loc["restore"]
        }' "$CSV"
    echo
    echo "The stores' own read bound (every pack read whole, 8 at a time, nothing decoded; store_read): s3s-fs $S3_READ MiB/s, local directory $LOCAL_READ MiB/s."
} >"$MD"
cat "$MD"
