#!/usr/bin/env bash
# vmvault against restic, borg and rustic on the same VM disks, in one run.
#
#   sudo benches/compare/run.sh          (~25 min on 2 cores after the first corpus build)
#
#   1. installs the peers (restic, borg from Debian; rustic from crates.io) and the tools;
#   2. builds the corpus once (cached under $WORKROOT/vmvault-compare/corpus):
#        v1: a Debian root file system (debootstrap $SUITE from $MIRROR, or, when that
#            fails, ~1 GiB of real files from this machine's /usr) in a GPT image,
#            $LOGICAL logical, with an EFI FAT32 partition and an ext4 partition;
#        v2: a day of changes on v1's file system (loop-mounted): packages unpacked,
#            logs written, an SQLite database created and updated;
#        v3: v2 plus $PAGES random 4 KiB page writes;
#        each also as qcow2 and as streamOptimized VMDK (qemu-img convert);
#   3. measures the machine's limits on v1's allocated data (machine_limits: single-core
#      zstd at vmvault's level, keyed BLAKE3, AES-256-GCM, FastCDC; cold sequential read);
#   4. for each format in $FORMATS and tool in $TOOLS, in a fresh repository: backs up v1,
#      v2, v3 (same path, new file each time), restores v3 and compares it byte for byte,
#      dropping the page cache before every step; /usr/bin/time gives wall, CPU, peak RSS;
#   5. vmvault's full backup of v1 on 1 core and on all cores (scaling);
#   6. writes compare.csv, compare.md and compare.png to $RESULTS.
#
# Knobs (defaults): WORKROOT=/var/tmp RESULTS=<repo>/benches/results LOGICAL=8G PAGES=300
# FORMATS="raw qcow2 vmdk" TOOLS="vmvault restic borg rustic" SUITE=bookworm
# MIRROR=http://deb.debian.org/debian ZSTD_LEVEL=3 (the peers' zstd level)
# REPEAT=1: rounds of step 4, each in fresh repositories; the report gives every step's
# median (and the range of its wall times). Rounds alternate over formats and tools, so
# a stall of a shared machine hits one sample of one tool, not a whole column.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORKROOT=${WORKROOT:-/var/tmp}
RESULTS=${RESULTS:-$ROOT/benches/results}
LOGICAL=${LOGICAL:-8G}
PAGES=${PAGES:-300}
FORMATS=${FORMATS:-raw qcow2 vmdk}
TOOLS=${TOOLS:-vmvault restic borg rustic}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ZSTD_LEVEL=${ZSTD_LEVEL:-3}
REPEAT=${REPEAT:-1}
BASE=$WORKROOT/vmvault-compare
CORPUS=$BASE/corpus
PEERS=$BASE/peers
WORK=$BASE/run
log() { echo "compare: $*" >&2; }

# --- tools ------------------------------------------------------------------------------
need_pkgs=()
for pair in restic:restic borg:borgbackup debootstrap:debootstrap gnuplot:gnuplot-nox \
    zstd:zstd qemu-img:qemu-utils sgdisk:gdisk mcopy:mtools mkfs.vfat:dosfstools \
    mkfs.ext4:e2fsprogs jq:jq /usr/bin/time:time losetup:mount; do
    command -v "${pair%%:*}" >/dev/null || need_pkgs+=("${pair#*:}")
done
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
RUSTIC=$PEERS/bin/rustic
if [[ $TOOLS == *rustic* && ! -x $RUSTIC ]]; then
    log "installing rustic from crates.io (~15 min on 2 cores, once)"
    CARGO_TARGET_DIR=$BASE/rustic-target cargo install --locked --quiet rustic-rs --root "$PEERS"
    rm -rf "$BASE/rustic-target"
fi
log "building vmvault"
(cd "$ROOT" && cargo build --release --quiet -p vmvault &&
    cargo build --release --quiet -p vmvault-benches --bin img_tool --bin machine_limits)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
VMVAULT=$TARGET_DIR/release/vmvault
IMG_TOOL=$TARGET_DIR/release/img_tool
LIMITS=$TARGET_DIR/release/machine_limits
CORES=$(nproc)

# --- corpus -----------------------------------------------------------------------------
mkdir -p "$CORPUS"
ROOTFS_TAR=$CORPUS/rootfs-$SUITE.tar
ROOTFS_KIND="debootstrap $SUITE (minbase + kernel, systemd, python3, perl, gcc, git, ...)"
if [[ ! -f $ROOTFS_TAR ]]; then
    log "debootstrap $SUITE from $MIRROR"
    rm -rf "$CORPUS/rootfs"
    if debootstrap --variant=minbase \
        --include=systemd-sysv,linux-image-amd64,python3,perl,vim,git,openssh-server,gcc,make,curl,locales,man-db,sqlite3,rsyslog,cron \
        "$SUITE" "$CORPUS/rootfs" "$MIRROR" >"$CORPUS/debootstrap.log" 2>&1; then
        rm -f "$CORPUS"/rootfs/var/cache/apt/archives/*.deb
    else
        log "debootstrap failed (see $CORPUS/debootstrap.log); using ~1 GiB of this machine's /usr"
        rm -rf "$CORPUS/rootfs"
        mkdir -p "$CORPUS/rootfs"
        cp -a --parents /usr/lib /usr/share /usr/bin "$CORPUS/rootfs" 2>/dev/null || true
        ROOTFS_KIND="files copied from this machine's /usr"
        echo "$ROOTFS_KIND" >"$CORPUS/rootfs.kind"
    fi
    tar -C "$CORPUS" -cf "$ROOTFS_TAR" rootfs
    rm -rf "$CORPUS/rootfs"
fi
[[ ! -f $CORPUS/rootfs.kind ]] || ROOTFS_KIND=$(cat "$CORPUS/rootfs.kind")

V1=$CORPUS/v1.img V2=$CORPUS/v2.img V3=$CORPUS/v3.img
if [[ ! -f $CORPUS/done ]]; then
    rm -f "$CORPUS"/v*.img "$CORPUS"/v*.qcow2 "$CORPUS"/v*.vmdk
    STAGE=$CORPUS/stage
    rm -rf "$STAGE" && mkdir -p "$STAGE"
    tar -C "$STAGE" -xf "$ROOTFS_TAR"
    log "building v1 ($LOGICAL GPT image: EFI FAT32 + ext4 with the root file system)"
    # mkimage.sh prints EXT4_OFFSET=... EXT4_BYTES=... EFI_OFFSET=... on stdout.
    MKIMAGE_VARS=$("$ROOT/benches/mkimage.sh" "$V1" "$LOGICAL" 0 "$CORPUS" "$STAGE/rootfs")
    eval "$MKIMAGE_VARS"
    rm -rf "$STAGE"

    log "building v2 (a day of changes, made on the loop-mounted file system)"
    cp --sparse=always "$V1" "$V2"
    MNT=$CORPUS/mnt
    mkdir -p "$MNT"
    mount -o loop,offset="$EXT4_OFFSET" "$V2" "$MNT"
    trap 'umount "$MNT" 2>/dev/null || true' EXIT
    # Packages installed: unpacked from .debs fetched once (fall back to a tree copy).
    DEBS=$CORPUS/debs
    mkdir -p "$DEBS"
    if [[ -z $(ls "$DEBS") ]]; then
        (cd "$DEBS" && apt-get download -qq nginx-core libnginx-mod-stream postgresql-15 \
            postgresql-client-15 libpq5 python3-numpy libllvm15 2>/dev/null) || true
    fi
    if [[ -n $(ls "$DEBS") ]]; then
        for d in "$DEBS"/*.deb; do dpkg-deb -x "$d" "$MNT"; done
    else
        cp -a /usr/share/doc "$MNT/usr/share/doc-extra"
    fi
    # Logs: a day of syslog and auth log lines, a rotated log compressed.
    python3 - "$MNT" <<'PY'
import gzip, os, random, sys
root = sys.argv[1]
rng = random.Random(2)
os.makedirs(f"{root}/var/log/nginx", exist_ok=True)
procs = ["systemd[1]", "sshd[812]", "CRON[2231]", "kernel", "nginx[990]", "postgres[1201]"]
with open(f"{root}/var/log/syslog", "a") as f:
    for i in range(200_000):
        f.write(f"Dec  2 {i // 8400 % 24:02}:{i // 140 % 60:02}:{i % 60:02} vm01 "
                f"{rng.choice(procs)}: event {rng.randrange(10**6)} status={rng.choice(['ok', 'retry', 'done'])}\n")
with open(f"{root}/var/log/nginx/access.log", "a") as f:
    for i in range(150_000):
        f.write(f"10.0.{rng.randrange(256)}.{rng.randrange(256)} - - [02/Dec/2026:{i // 6250 % 24:02}:{i // 104 % 60:02}:{i % 60:02} +0000] "
                f"\"GET /api/v1/items/{rng.randrange(10**5)} HTTP/1.1\" 200 {rng.randrange(10**4)} \"-\" \"curl/7.88\"\n")
with open(f"{root}/var/log/syslog", "rb") as src, gzip.open(f"{root}/var/log/syslog.1.gz", "wb") as dst:
    dst.write(src.read())
PY
    # A database written: 300 000 rows, then a tenth of them updated.
    mkdir -p "$MNT/var/lib/app"
    python3 - "$MNT/var/lib/app/app.db" <<'PY'
import random, sqlite3, sys
rng = random.Random(3)
db = sqlite3.connect(sys.argv[1])
db.execute("create table orders (id integer primary key, customer text, amount real, note text)")
db.executemany("insert into orders values (?, ?, ?, ?)",
               ((i, f"customer-{rng.randrange(5000)}", rng.random() * 1000,
                 " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "shipped", "paid", "open"])
                          for _ in range(8))) for i in range(300_000)))
db.commit()
db.executemany("update orders set amount = ? where id = ?",
               ((rng.random(), rng.randrange(300_000)) for _ in range(30_000)))
db.commit()
db.close()
PY
    sync
    umount "$MNT"
    trap - EXIT
    rmdir "$MNT"

    log "building v3 ($PAGES random 4 KiB page writes on v2)"
    cp --sparse=always "$V2" "$V3"
    "$IMG_TOOL" scribble "$V3" "$PAGES" 7 >/dev/null
    for v in v1 v2 v3; do
        log "converting $v to qcow2 and streamOptimized VMDK"
        qemu-img convert -f raw -O qcow2 "$CORPUS/$v.img" "$CORPUS/$v.qcow2"
        qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$CORPUS/$v.img" "$CORPUS/$v.vmdk"
    done
    touch "$CORPUS/done"
fi

# --- measurement helpers ----------------------------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
COLD=yes
# Also compacts memory: on a long run free memory fragments, the kernel then compacts
# while it allocates page cache, and a restore's system time doubled (1.2 -> 2.8 s) until
# /proc/sys/vm/compact_memory was written; every tool gets the same fresh start.
drop_caches() {
    sync
    { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null || COLD=no
    { echo 1 >/proc/sys/vm/compact_memory; } 2>/dev/null || true
}
export RESTIC_PASSWORD=compare-password BORG_PASSPHRASE=compare-password \
    RUSTIC_PASSWORD=compare-password VMVAULT_PASSWORD=compare-password
export BORG_BASE_DIR=$WORK/borg-base BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
    BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
CSV=$WORK/compare.csv
echo "round,format,tool,step,wall_s,user_s,sys_s,peak_rss_mib,repo_bytes,restored_allocated_bytes" >"$CSV"
ROUND=1

# run FORMAT TOOL STEP REPO CMD...: times CMD with a cold page cache, appends a CSV row.
run() {
    local fmt=$1 tool=$2 step=$3 repo=$4
    shift 4
    drop_caches
    if ! /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.txt" "$@" >"$WORK/out.log" 2>&1; then
        log "$tool $step on $fmt failed:"
        tail -20 "$WORK/out.log" >&2
        exit 1
    fi
    local wall user sys rss
    read -r wall user sys rss <"$WORK/time.txt"
    echo "$ROUND,$fmt,$tool,$step,$wall,$user,$sys,$((rss / 1024)),$(du -sb "$repo" | cut -f1),${RESTORED_ALLOC:-}" >>"$CSV"
    log "$(printf '%-6s %-8s %-10s %7.2f s wall %7.2f s CPU %5d MiB' "$fmt" "$tool" "$step" "$wall" \
        "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" $((rss / 1024)))"
}

# backup TOOL REPO PATH: the tool's backup command line for PATH (a file).
backup_cmd() {
    local tool=$1 repo=$2 path=$3
    case $tool in
    vmvault) echo "$VMVAULT" -r "$repo" --cache-dir "$WORK/cache/vmvault" -q backup --vm compare --disk-name disk "$path" ;;
    restic) echo restic -r "$repo" --cache-dir "$WORK/cache/restic" -q backup "$path" ;;
    borg) echo borg create --compression "zstd,$ZSTD_LEVEL" "$repo::snap-$(date +%s%N)" "$path" ;;
    rustic) echo "$RUSTIC" -r "$repo" --cache-dir "$WORK/cache/rustic" backup "$path" ;;
    esac
}

init_repo() {
    local tool=$1 repo=$2
    case $tool in
    vmvault) "$VMVAULT" -r "$repo" -q init ;;
    restic) restic -r "$repo" --cache-dir "$WORK/cache/restic" -q init ;;
    borg) borg init -e repokey "$repo" ;;
    rustic) "$RUSTIC" -r "$repo" --cache-dir "$WORK/cache/rustic" init ;;
    esac >"$WORK/init.log" 2>&1 || { log "$tool init failed:"; cat "$WORK/init.log" >&2; exit 1; }
}

# restore_cmd TOOL REPO DIR: restores the latest snapshot into DIR (vmvault: DIR/out;
# the others: DIR/<the backed-up path>). borg, which extracts into the working directory,
# is run by the loop below.
restore_cmd() {
    local tool=$1 repo=$2 dir=$3
    case $tool in
    vmvault) echo "$VMVAULT" -r "$repo" --cache-dir "$WORK/cache/vmvault" -q restore latest --vm compare --target "$dir/out" ;;
    restic) echo restic -r "$repo" --cache-dir "$WORK/cache/restic" -q restore latest --target "$dir" ;;
    rustic) echo "$RUSTIC" -r "$repo" --cache-dir "$WORK/cache/rustic" restore latest "$dir" ;;
    esac
}

# --- machine limits ---------------------------------------------------------------------
log "measuring the machine's limits on v1's allocated data"
ALLOC=$WORK/allocated.bin
ALLOCATED=$("$IMG_TOOL" allocated "$V1" "$ALLOC")
drop_caches
SEQ_READ=$(dd if="$ALLOC" of=/dev/null bs=4M 2>&1 | tr '\r' '\n' | grep copied | tail -1 |
    awk '{ v = $(NF - 1); if ($NF ~ /^GB/) v *= 1000; print v }')
"$LIMITS" "$ALLOC" "$ZSTD_LEVEL" >"$WORK/limits.txt"
rm -f "$ALLOC"
lim() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/limits.txt"; }

# --- the runs ---------------------------------------------------------------------------
for ROUND in $(seq "$REPEAT"); do
for fmt in $FORMATS; do
    case $fmt in raw) ext=img ;; qcow2) ext=qcow2 ;; vmdk) ext=vmdk ;; *) log "unknown format $fmt"; exit 2 ;; esac
    for tool in $TOOLS; do
        repo=$WORK/repo-$tool-$fmt
        in=$WORK/input-$fmt
        rm -rf "$repo" "$WORK/cache" "$BORG_BASE_DIR" "$in"
        mkdir -p "$in"
        init_repo "$tool" "$repo"
        for v in v1 v2 v3; do
            ln -f "$CORPUS/$v.$ext" "$in/disk.$ext"
            # shellcheck disable=SC2046
            RESTORED_ALLOC="" run "$fmt" "$tool" "backup $v" "$repo" $(backup_cmd "$tool" "$repo" "$in/disk.$ext")
        done
        out=$WORK/restore
        rm -rf "$out" && mkdir -p "$out"
        if [[ $tool == borg ]]; then
            last=$(borg list --last 1 --format '{archive}' "$repo")
            RESTORED_ALLOC="" run "$fmt" "$tool" "restore v3" "$repo" bash -c "cd '$out' && borg extract --sparse '$repo::$last'"
        else
            # shellcheck disable=SC2046
            RESTORED_ALLOC="" run "$fmt" "$tool" "restore v3" "$repo" $(restore_cmd "$tool" "$repo" "$out")
        fi
        restored=$out/out
        [[ $tool == vmvault ]] || restored=$out$in/disk.$ext
        [[ -f $restored ]] || { log "$tool restored no $restored"; exit 1; }
        if [[ $tool == vmvault ]]; then
            cmp "$restored" "$V3" || { log "vmvault's restore of $fmt differs from v3"; exit 1; }
        else
            cmp "$restored" "$CORPUS/v3.$ext" || { log "$tool's restore differs from v3.$ext"; exit 1; }
        fi
        alloc=$(du -B1 "$restored" | cut -f1)
        sed -i '$ s/,$/,'"$alloc"'/' "$CSV"
        rm -rf "$out" "$in" "$repo"
    done
done
done
ROUND=1

# Scaling: vmvault's full backup of v1 (raw) on 1 core and on all cores (taskset; the
# worker count follows the CPUs the process may use).
if [[ $TOOLS == *vmvault* ]]; then
    for cpus in 1 "$CORES"; do
        repo=$WORK/repo-scaling-$cpus
        rm -rf "$repo" "$WORK/cache"
        init_repo vmvault "$repo"
        mkdir -p "$WORK/input-scaling" && ln -f "$V1" "$WORK/input-scaling/disk.img"
        run raw vmvault "backup v1 on $cpus cores" "$repo" taskset -c "0-$((cpus - 1))" \
            "$VMVAULT" -r "$repo" --cache-dir "$WORK/cache/vmvault" -q \
            backup --vm compare --disk-name disk "$WORK/input-scaling/disk.img"
        rm -rf "$repo"
    done
fi

# --- report -----------------------------------------------------------------------------
mkdir -p "$RESULTS"
cp "$CSV" "$RESULTS/compare.csv"
cp "$WORK/limits.txt" "$RESULTS/compare_limits.txt"
LOGICAL_BYTES=$(stat -c %s "$V1")
python3 "$ROOT/benches/compare/report.py" "$RESULTS/compare.csv" "$WORK/limits.txt" \
    --cores "$CORES" --allocated "$ALLOCATED" --logical "$LOGICAL_BYTES" --seq-read "$SEQ_READ" \
    --cold "$COLD" --corpus "$ROOTFS_KIND" --pages "$PAGES" \
    --sizes "$(for v in v1 v2 v3; do for e in img qcow2 vmdk; do printf '%s.%s=%s ' $v $e "$(du -B1 "$CORPUS/$v.$e" | cut -f1)"; done; done)" \
    --versions "restic $(restic version | awk '{ print $2 }'), borg $(borg --version | awk '{ print $2 }'), rustic $("$RUSTIC" --version 2>/dev/null | awk '{ print $2 }'), vmvault $(cd "$ROOT" && git rev-parse --short HEAD)" \
    --md "$RESULTS/compare.md" --gnuplot "$WORK/chart"
if [[ -f $WORK/chart.gp ]]; then
    (cd "$WORK" && gnuplot chart.gp) && cp "$WORK/chart.png" "$RESULTS/compare.png"
fi
cat "$RESULTS/compare.md"
