#!/usr/bin/env bash
# End-to-end benchmark of the vmvault CLI on a realistic VM disk image.
#
#   1. builds the release binary (and the benches' img_tool);
#   2. builds a sparse GPT image with mkimage.sh: EFI FAT partition + ext4 partition made
#      with `mkfs.ext4 -d` from ~DATA_MIB MiB of real installed files, LOGICAL bytes long;
#   3. times, with /usr/bin/time, page cache dropped before each cold step:
#        full backup (cold), re-backup of the unchanged disk (cold and warm),
#        backup after scattered changes (CHANGED_PAGES random 4 KiB page writes and
#        APPENDED_FILES files appended to inside the ext4 file system), and a restore of
#        that last snapshot to a file (verified with cmp), and to tmpfs if it has room;
#   4. measures the machine's bound: single-core `zstd -b3` throughput on the image's
#      allocated bytes; bound = allocated / (cores x that throughput);
#   5. repeats the cold full backup on a disk SCALE times larger (logical and allocated:
#      the extra partitions are byte-substituted copies of the ext4 partition, which
#      compress alike but share no chunk) to see whether peak RSS stays flat;
#   6. prints a markdown table and writes e2e.csv / e2e.md to RESULTS.
#
# Environment knobs (defaults): DATA_MIB=1024 LOGICAL=8G SCALE=16 CHANGED_PAGES=300
# APPENDED_FILES=5 WORKROOT=/tmp RESULTS=<repo>/benches/results SKIP_LARGE=0
# Needs root for dropping the page cache (otherwise every step runs warm and says so).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA_MIB=${DATA_MIB:-1024}
LOGICAL=${LOGICAL:-8G}
SCALE=${SCALE:-16}
CHANGED_PAGES=${CHANGED_PAGES:-300}
APPENDED_FILES=${APPENDED_FILES:-5}
WORKROOT=${WORKROOT:-/tmp}
RESULTS=${RESULTS:-$ROOT/benches/results}
SKIP_LARGE=${SKIP_LARGE:-0}

for tool in /usr/bin/time zstd jq debugfs sgdisk cmp; do
    command -v "$tool" >/dev/null || { echo "e2e.sh: $tool is missing" >&2; exit 1; }
done

WORK=$(mktemp -d "$WORKROOT/vmvault-e2e.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "e2e: $*" >&2; }

# --- build --------------------------------------------------------------------------
log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p vmvault -p vmvault-benches --bins)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
VMVAULT_BIN=$TARGET_DIR/release/vmvault
IMG_TOOL=$TARGET_DIR/release/img_tool
CORES=$(nproc)

# --- helpers ------------------------------------------------------------------------
COLD=yes
drop_caches() {
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        COLD=no
    fi
}

PW=$WORK/password
echo "e2e-benchmark-password" >"$PW"

# vmv REPO CACHE_DIR ARGS...: the CLI on a repository with its own cache directory.
vmv() {
    local repo=$1 cache=$2
    shift 2
    "$VMVAULT_BIN" -r "$repo" --password-file "$PW" --cache-dir "$cache" --json "$@"
}

repo_bytes() { du -sb "$1" | cut -f1; }

CSV=$WORK/e2e.csv
echo "step,cache,wall_s,user_s,sys_s,peak_rss_kib,rss_after_1s_kib,logical_bytes,data_bytes,fs_read_bytes,repo_growth_bytes,data_mb_per_s,logical_mb_per_s" >"$CSV"

# measure STEP CACHE(cold|warm) REPO CACHE_DIR KIND(backup|restore) ARGS...: runs
# `vmvault ARGS` on REPO under /usr/bin/time, appends a CSV row, leaves its JSON output
# in $WORK/out.json.
measure() {
    local step=$1 cache=$2 repo=$3 cache_dir=$4 kind=$5
    shift 5
    if [[ $cache == cold ]]; then drop_caches; fi
    [[ $COLD == yes ]] || cache=warm
    local before after
    before=$(repo_bytes "$repo")
    /usr/bin/time -f '%e %U %S %M %I %O' -o "$WORK/time.txt" \
        "$VMVAULT_BIN" -r "$repo" --password-file "$PW" --cache-dir "$cache_dir" --json "$@" \
        >"$WORK/out.json" &
    # RSS over time, 4 samples a second: the peak (%M) of every command includes the
    # key derivation (Argon2id, 64 MiB) in its first ~0.3 s; the samples after the first
    # second show what the pipeline itself holds.
    local tpid=$! child="" t0 r
    t0=$(date +%s%N)
    TRACE=$WORK/rss.trace
    echo "ms,rss_kib" >"$TRACE"
    while kill -0 "$tpid" 2>/dev/null; do
        [[ -n $child ]] || child=$(pgrep -P "$tpid" | head -n 1 || true)
        if [[ -n $child ]]; then
            r=$(awk '/^VmRSS/ { print $2 }' "/proc/$child/status" 2>/dev/null || true)
            [[ -z $r ]] || echo "$((($(date +%s%N) - t0) / 1000000)),$r" >>"$TRACE"
        fi
        sleep 0.25
    done
    wait "$tpid"
    local steady
    steady=$(awk -F, 'NR > 1 && $1 >= 1000 && $2 > m { m = $2 } END { print m + 0 }' "$TRACE")
    after=$(repo_bytes "$repo")
    local wall user sys rss fsin fsout
    read -r wall user sys rss fsin fsout <"$WORK/time.txt"
    local logical data
    if [[ $kind == backup ]]; then
        logical=$(jq -r .logical_bytes "$WORK/out.json")
        data=$(jq -r .read_bytes "$WORK/out.json")
    else
        logical=$(jq -r '[.disks[].logical_bytes] | add' "$WORK/out.json")
        data=$(jq -r '[.disks[].data_bytes] | add' "$WORK/out.json")
    fi
    local rate lrate
    rate=$(awk -v d="$data" -v w="$wall" 'BEGIN { printf "%.1f", (w > 0 ? d / w / 1e6 : 0) }')
    lrate=$(awk -v d="$logical" -v w="$wall" 'BEGIN { printf "%.1f", (w > 0 ? d / w / 1e6 : 0) }')
    echo "$step,$cache,$wall,$user,$sys,$rss,$steady,$logical,$data,$((fsin * 512)),$((after - before)),$rate,$lrate" >>"$CSV"
    log "$step ($cache): ${wall}s wall, ${user}s user, ${sys}s sys, peak RSS $((rss / 1024)) MiB (after 1 s: $((steady / 1024)) MiB), data $((data >> 20)) MiB at $rate MB/s, repo +$(((after - before) >> 20)) MiB"
}

# --- the image ----------------------------------------------------------------------
IMG=$WORK/disk.img
log "building a $LOGICAL image with $DATA_MIB MiB of real files"
eval "$("$ROOT/benches/mkimage.sh" "$IMG" "$LOGICAL" "$DATA_MIB" "$WORK" | tail -1)"
IMG_LOGICAL=$(stat -c %s "$IMG")
IMG_ALLOCATED=$(du -B1 "$IMG" | cut -f1)

# --- backups of the base image ------------------------------------------------------
REPO=$WORK/repo
CACHE=$WORK/cache
vmv "$REPO" "$CACHE" init >/dev/null
measure "full backup" cold "$REPO" "$CACHE" backup backup --vm e2e "$IMG"
FULL_WALL=$(awk -F, '$1 == "full backup" { print $3 }' "$CSV")
FULL_RSS=$(awk -F, '$1 == "full backup" { print $6 }' "$CSV")
FULL_STEADY=$(awk -F, '$1 == "full backup" { print $7 }' "$CSV")
FULL_CPU=$(awk -F, '$1 == "full backup" { print $4 + $5 }' "$CSV")
cp "$TRACE" "$WORK/rss_full.csv"
measure "re-backup unchanged" cold "$REPO" "$CACHE" backup backup --vm e2e "$IMG"
measure "re-backup unchanged" warm "$REPO" "$CACHE" backup backup --vm e2e "$IMG"

# Scattered changes: files appended to inside the ext4 file system (rewritten through
# debugfs, as a guest would), then random page writes anywhere in the allocated data.
FS="$IMG?offset=$EXT4_OFFSET"
mapfile -t VICTIMS < <(debugfs -R "ls -p /usr/bin" "$FS" 2>/dev/null |
    awk -F/ '$3 ~ /^100/ && $7 > 0 { print "/usr/bin/" $6 }' | head -n "$APPENDED_FILES")
[[ ${#VICTIMS[@]} -gt 0 ]] || { echo "e2e.sh: no files found to append to" >&2; exit 1; }
CMDS=$WORK/debugfs.cmds
: >"$CMDS"
for i in "${!VICTIMS[@]}"; do
    f=${VICTIMS[$i]}
    local_copy=$WORK/append.$i
    debugfs -R "dump $f $local_copy" "$FS" 2>/dev/null
    seq -f "appended log line %g by the vmvault e2e benchmark" 1 2000 >>"$local_copy"
    printf 'rm %s\nwrite %s %s\n' "$f" "$local_copy" "$f" >>"$CMDS"
done
debugfs -w -f "$CMDS" "$FS" >/dev/null 2>&1
e2fsck -fn "$FS" >/dev/null 2>&1 || { echo "e2e.sh: e2fsck: the appended-to file system is damaged" >&2; exit 1; }
rm -f "$WORK"/append.*
log "appended to ${#VICTIMS[@]} files: ${VICTIMS[*]}"
# Then page writes anywhere in the allocated data (file data or metadata, as a block
# device sees guest writes).
log "writing $CHANGED_PAGES random 4 KiB pages"
"$IMG_TOOL" scribble "$IMG" "$CHANGED_PAGES" 42 >/dev/null
measure "backup after changes" cold "$REPO" "$CACHE" backup backup --vm e2e "$IMG"

RESTORED=$WORK/restored.img
measure "restore last snapshot" cold "$REPO" "$CACHE" restore restore latest --vm e2e --target "$RESTORED"
log "verifying the restored image"
cmp "$IMG" "$RESTORED"
rm -f "$RESTORED"
# The same restore into tmpfs, when there is room: without the target disk's write
# bandwidth as the limit, this shows what the restore path itself can do.
SHM_FREE=$(df -B1 --output=avail /dev/shm 2>/dev/null | tail -n 1 || echo 0)
if [[ $SHM_FREE =~ ^[0-9]+$ ]] && ((SHM_FREE > 2 * IMG_ALLOCATED)); then
    SHM=$(mktemp -d /dev/shm/vmvault-e2e.XXXXXX)
    trap 'rm -rf "$WORK" "$SHM"' EXIT
    measure "restore to tmpfs" cold "$REPO" "$CACHE" restore restore latest --vm e2e --target "$SHM/restored.img"
    cmp "$IMG" "$SHM/restored.img"
    rm -rf "$SHM"
fi

# --- the machine's bound ------------------------------------------------------------
ALLOC_FILE=$WORK/allocated.bin
ALLOCATED=$("$IMG_TOOL" allocated "$IMG" "$ALLOC_FILE")
# The storage's own speeds, for the restore and cold re-backup rows: a cold sequential
# read of the allocated data and a 1 GiB sequential write with fdatasync.
dd_mbps() { tr '\r' '\n' | grep -E 'copied' | tail -1 | awk '{ v = $(NF - 1); u = $NF; if (u ~ /^GB/) v *= 1000; if (u ~ /^kB/) v /= 1000; print v }'; }
drop_caches
DISK_READ=$(dd if="$ALLOC_FILE" of=/dev/null bs=4M 2>&1 | dd_mbps)
DISK_WRITE=$(dd if=/dev/zero of="$WORK/dd.bin" bs=4M count=256 conv=fdatasync 2>&1 | dd_mbps)
rm -f "$WORK/dd.bin"
zstd_mbps() { # the first "<n> MB/s" of zstd -b's last result line is the compression speed
    local v
    v=$(zstd -q -b3 -e3 -T1 -i5 "$@" "$ALLOC_FILE" 2>&1 | tr '\r' '\n' | grep 'MB/s' | tail -1 |
        awk '{ for (i = 1; i < NF; i++) if ($(i + 1) ~ /^MB\/s/) { print $i; exit } }')
    [[ $v =~ ^[0-9.]+$ ]] || { echo "e2e.sh: cannot parse zstd -b output" >&2; exit 1; }
    echo "$v"
}
log "measuring single-core zstd -3 throughput on the $((ALLOCATED >> 20)) MiB of allocated data"
ZSTD_WHOLE=$(zstd_mbps)
ZSTD_128K=$(zstd_mbps -B131072)
# CPU seconds of one plain single-threaded compression: wall-clock speeds on a machine
# shared with other work understate the CPU; CPU time compares vmvault's work with
# zstd's independently of the neighbours.
/usr/bin/time -f '%U %S' -o "$WORK/zstd.time" zstd -q -3 -T1 -c "$ALLOC_FILE" >/dev/null
ZSTD_CPU=$(awk '{ print $1 + $2 }' "$WORK/zstd.time")
rm -f "$ALLOC_FILE"
BOUND=$(awk -v a="$ALLOCATED" -v c="$CORES" -v t="$ZSTD_WHOLE" 'BEGIN { printf "%.2f", a / (c * t * 1e6) }')
BOUND_128K=$(awk -v a="$ALLOCATED" -v c="$CORES" -v t="$ZSTD_128K" 'BEGIN { printf "%.2f", a / (c * t * 1e6) }')
RATIO=$(awk -v w="$FULL_WALL" -v b="$BOUND" 'BEGIN { printf "%.2f", w / b }')
RATIO_128K=$(awk -v w="$FULL_WALL" -v b="$BOUND_128K" 'BEGIN { printf "%.2f", w / b }')

# --- RSS flatness: a disk SCALE times larger ----------------------------------------
BIG_RSS=""
BIG_NOTE="skipped (SKIP_LARGE=1)"
rm -rf "$REPO" "$CACHE"
if [[ $SKIP_LARGE != 1 ]]; then
    BIG=$WORK/big.img
    log "building a disk $SCALE times larger"
    cp --sparse=always "$IMG" "$BIG"
    truncate -s $((IMG_LOGICAL * SCALE)) "$BIG"
    sgdisk -e "$BIG" >/dev/null
    for ((k = 1; k < SCALE; k++)); do
        part=$((k + 2))
        sgdisk -n "$part:0:+$((EXT4_BYTES / 1024))K" -t "$part:8300" "$BIG" >/dev/null
        first=$(sgdisk -i "$part" "$BIG" | awk '$1 == "First" && $2 == "sector:" { print $3 }')
        "$IMG_TOOL" replicate "$IMG" "$EXT4_OFFSET" "$EXT4_BYTES" "$BIG" $((first * 512)) "$k" >/dev/null
    done
    BIG_LOGICAL=$(stat -c %s "$BIG")
    BIG_ALLOCATED=$(du -B1 "$BIG" | cut -f1)
    log "large disk: $((BIG_LOGICAL >> 30)) GiB logical, $((BIG_ALLOCATED >> 20)) MiB allocated"
    vmv "$WORK/repo-big" "$WORK/cache-big" init >/dev/null
    measure "full backup ${SCALE}x disk" cold "$WORK/repo-big" "$WORK/cache-big" backup backup --vm e2e-big "$BIG"
    BIG_RSS=$(awk -F, -v s="full backup ${SCALE}x disk" '$1 == s { print $6 }' "$CSV")
    cp "$TRACE" "$WORK/rss_big.csv"
    BIG_NOTE="$((BIG_LOGICAL >> 30)) GiB logical, $((BIG_ALLOCATED >> 20)) MiB allocated"
    rm -rf "$BIG" "$WORK/repo-big" "$WORK/cache-big"
fi

# --- report -------------------------------------------------------------------------
MD=$WORK/e2e.md
{
    echo "vmvault end-to-end benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "machine: $CORES cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "image: $((IMG_LOGICAL >> 30)) GiB logical, $((IMG_ALLOCATED >> 20)) MiB allocated (GPT, EFI FAT32 + ext4 from $DATA_MIB MiB of real files); changes: $CHANGED_PAGES random 4 KiB pages + ${#VICTIMS[@]} files appended"
    echo
    echo "| step | cache | wall s | user s | sys s | peak RSS MiB | RSS after 1 s MiB | data | fs reads | repo growth | data MB/s | logical MB/s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    tail -n +2 "$CSV" | awk -F, '{
        printf "| %s | %s | %s | %s | %s | %.0f | %.0f | %.0f MiB | %.0f MiB | %.1f MiB | %s | %s |\n",
            $1, $2, $3, $4, $5, $6 / 1024, $7 / 1024, $9 / 1048576, $10 / 1048576, $11 / 1048576, $12, $13
    }'
    echo
    echo "bound: $((ALLOCATED >> 20)) MiB allocated / ($CORES cores x $ZSTD_WHOLE MB/s single-core zstd -3 on the whole allocated data) = ${BOUND} s; full backup took ${FULL_WALL} s = **${RATIO}x the bound** (target <= 1.5x)"
    echo "bound with 128 KiB independent blocks (as vmvault compresses): $ZSTD_128K MB/s per core, ${BOUND_128K} s; full backup = ${RATIO_128K}x"
    echo "storage: cold sequential read $DISK_READ MB/s, sequential write + fdatasync $DISK_WRITE MB/s (dd)"
    echo "CPU time: full backup ${FULL_CPU} s (user + sys) vs ${ZSTD_CPU} s for \`zstd -3 -T1\` of the same allocated data: $(awk -v a="$FULL_CPU" -v b="$ZSTD_CPU" 'BEGIN { printf "%.2f", a / b }')x; with perfect use of $CORES cores the wall-time ratio to the bound would be the same"
    if [[ -n $BIG_RSS ]]; then
        echo "peak RSS: full backup $((FULL_RSS / 1024)) MiB (after the first second: $((FULL_STEADY / 1024)) MiB); full backup of the ${SCALE}x disk ($BIG_NOTE) $((BIG_RSS / 1024)) MiB (target <= 150 MB and flat); RSS traces in e2e_rss_full.csv and e2e_rss_${SCALE}x.csv"
    else
        echo "peak RSS: full backup $((FULL_RSS / 1024)) MiB; large disk $BIG_NOTE"
    fi
} >"$MD"
cat "$MD"
mkdir -p "$RESULTS"
{
    cat "$CSV"
    # The bound as rows of their own: wall_s is the bound, data_mb_per_s all cores' zstd.
    echo "bound: zstd -3 whole data,n/a,$BOUND,,,,,$IMG_LOGICAL,$ALLOCATED,,,$(awk -v t="$ZSTD_WHOLE" -v c="$CORES" 'BEGIN { print t * c }'),"
    echo "bound: zstd -3 128 KiB blocks,n/a,$BOUND_128K,,,,,$IMG_LOGICAL,$ALLOCATED,,,$(awk -v t="$ZSTD_128K" -v c="$CORES" 'BEGIN { print t * c }'),"
    echo "zstd -3 -T1 CPU seconds on the allocated data,n/a,,$ZSTD_CPU,,,,$IMG_LOGICAL,$ALLOCATED,,,,"
    echo "dd cold sequential read,n/a,,,,,,,,,,$DISK_READ,"
    echo "dd sequential write + fdatasync,n/a,,,,,,,,,,$DISK_WRITE,"
} >"$RESULTS/e2e.csv"
cp "$MD" "$RESULTS/e2e.md"
cp "$WORK/rss_full.csv" "$RESULTS/e2e_rss_full.csv"
[[ ! -f $WORK/rss_big.csv ]] || cp "$WORK/rss_big.csv" "$RESULTS/e2e_rss_${SCALE}x.csv"
log "wrote $RESULTS/e2e.csv and $RESULTS/e2e.md"
