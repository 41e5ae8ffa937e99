#!/usr/bin/env bash
# Single-file restore and browsing benchmark (issue 5), on an ext4 disk holding a copy of
# SRC (default /usr: ~5 GB, ~130 000 entries):
#
#   1. backup with and without cataloguing, alternated ROUNDS times (catalog overhead);
#   2. a second, unchanged backup (the catalog must dedup: 0 new chunks);
#   3. `guest_read`: time to the first byte and to the whole of FILE (a ~1 MB file) from
#      the snapshot, page cache dropped, and the bytes fetched from the repository;
#   4. `ls -R` of the guest tree on a vmvault FUSE mount against the same image
#      loop-mounted read-only by the kernel, cold (page cache dropped) then warm.
#
# Environment: SRC=/usr FILE=share/perl/5.36.0/unicore/Name.pl LOGICAL=8G ROUNDS=2
# WORK=/tmp/vmvault-guest-bench. Needs root (drop_caches, loop mount) and /dev/fuse.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=${SRC:-/usr}
FILE=${FILE:-share/perl/5.36.0/unicore/Name.pl}
LOGICAL=${LOGICAL:-8G}
ROUNDS=${ROUNDS:-2}
WORK=${WORK:-/tmp/vmvault-guest-bench}
cd "$ROOT" && cargo build --release -q -p vmvault -p vmvault-benches --bin guest_read
V="$ROOT/target/release/vmvault"
export VMVAULT_PASSWORD=bench
mkdir -p "$WORK" && cd "$WORK"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(page cache not dropped)"; }
if [ ! -f disk.img ]; then
  truncate -s "$LOGICAL" disk.img
  mkfs.ext4 -q -F -d "$SRC" disk.img
fi
echo "## backup time with and without catalogs"
for i in $(seq 1 "$ROUNDS"); do
  for mode in no-catalog catalog; do
    rm -rf "r-$mode" "c-$mode"; "$V" -r "r-$mode" init -q
    extra=(); [ "$mode" = no-catalog ] && extra=(--no-catalog)
    drop
    /usr/bin/time -f "$mode: %e s, %M KiB peak RSS" "$V" -r "r-$mode" --cache-dir "c-$mode" \
      backup --vm bench "${extra[@]}" disk.img -q
  done
done
echo "## unchanged second backup (catalog dedup)"
"$V" -r r-catalog --cache-dir c-catalog backup --vm bench disk.img | grep -E "new data|catalogued"
SNAP=$("$V" -r r-catalog --cache-dir c-catalog --json snapshots | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo "## one file: time to first byte, bytes fetched"
drop
"$ROOT/target/release/guest_read" r-catalog bench "$SNAP" "disk/fs/$FILE" --cache-dir c-catalog
echo "## ls -R: vmvault mount vs kernel loop mount"
mkdir -p loop mnt
mount -o loop,ro disk.img loop
drop; /usr/bin/time -f "loop mount, cold: %e s" ls -R loop > /dev/null
/usr/bin/time -f "loop mount, warm: %e s" ls -R loop > /dev/null
umount loop
"$V" -r r-catalog --cache-dir c-catalog mount mnt --vm bench -q &
for _ in $(seq 1 100); do [ -e mnt/bench/latest ] && break; sleep 0.1; done
D=mnt/bench/latest/files/disk/fs
drop; /usr/bin/time -f "vmvault mount, cold: %e s" ls -R "$D" > /dev/null
/usr/bin/time -f "vmvault mount, warm: %e s" ls -R "$D" > /dev/null
fusermount3 -u mnt; wait
