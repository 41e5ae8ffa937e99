#!/usr/bin/env bash
# Builds a realistic, sparse raw VM disk image for the benchmarks:
#   GPT, partition 1 = 256 MiB EFI system partition (FAT32 with a few real files),
#   partition 2 = ext4 (4 KiB blocks, journal) filling the rest, made with `mkfs.ext4 -d`
#   from a staging directory of real installed files (hard links to files under
#   /usr/lib, /usr/share and /usr/bin, sampled evenly across them until DATA_MIB).
#
# usage: mkimage.sh IMAGE LOGICAL_BYTES DATA_MIB WORKDIR [ROOTDIR]
#   IMAGE          the image to create (sparse)
#   LOGICAL_BYTES  its logical size, e.g. 8G (anything truncate -s accepts)
#   DATA_MIB       MiB of file data to put into the ext4 filesystem (ignored with ROOTDIR)
#   WORKDIR        scratch directory (the staging directory is made and removed there)
#   ROOTDIR        optional: a ready root file system to use as the ext4 content instead
#                  of sampling /usr; its boot/vmlinuz-* and boot/initrd.img-* go to the
#                  EFI partition instead of a few /usr/bin programs
# Prints shell assignments on its last line:
#   EXT4_OFFSET=<bytes> EXT4_BYTES=<bytes> EFI_OFFSET=<bytes>
set -euo pipefail

if [[ $# -ne 4 && $# -ne 5 ]]; then
    echo "usage: $0 IMAGE LOGICAL_BYTES DATA_MIB WORKDIR [ROOTDIR]" >&2
    exit 2
fi
IMAGE=$1 LOGICAL=$2 DATA_MIB=$3 WORK=$4 ROOTDIR=${5:-}
for tool in sgdisk mkfs.ext4 mkfs.vfat mcopy mmd; do
    command -v "$tool" >/dev/null || { echo "mkimage.sh: $tool is missing" >&2; exit 1; }
done
if [[ -n $ROOTDIR ]]; then
    CONTENT=$ROOTDIR
else
    mkdir -p "$WORK"
    STAGE=$(mktemp -d "$WORK/stage.XXXXXX")
    trap 'rm -rf "$STAGE"' EXIT

    # --- staging directory: real files, sampled with a stride so every tree contributes.
    LIST="$STAGE.list"
    trap 'rm -rf "$STAGE" "$LIST"' EXIT
    find /usr/lib /usr/share /usr/bin -xdev -type f -size +0 -printf '%s\t%p\n' 2>/dev/null |
        LC_ALL=C sort -t $'\t' -k2 >"$LIST.all"
    TARGET=$((DATA_MIB * 1024 * 1024))
    awk -F '\t' -v target="$TARGET" '
        { size[NR] = $1; path[NR] = $2; total += $1 }
        END {
            stride = int(total / target); if (stride < 1) stride = 1
            for (phase = 0; phase < stride && sum < target; phase++)
                for (i = 1 + phase; i <= NR && sum < target; i += stride) {
                    sum += size[i]; print path[i]
                }
            if (sum < target) printf "mkimage.sh: only %d bytes of files found\n", sum > "/dev/stderr"
        }' "$LIST.all" >"$LIST"
    rm -f "$LIST.all"
    mkdir -p "$STAGE/root"
    # Hard links cost no space or time; fall back to copies across file systems.
    if ! xargs -d '\n' -a "$LIST" cp -l --parents -t "$STAGE/root" 2>/dev/null; then
        xargs -d '\n' -a "$LIST" cp --parents -t "$STAGE/root"
    fi
    STAGED=$(du -sb --apparent-size "$STAGE/root" | cut -f1)
    echo "mkimage.sh: staged $(wc -l <"$LIST") files, $((STAGED >> 20)) MiB" >&2

    CONTENT=$STAGE/root
fi

# --- GPT image.
rm -f "$IMAGE"
truncate -s "$LOGICAL" "$IMAGE"
sgdisk -n 1:2048:+256M -t 1:ef00 -c 1:EFI -n 2:0:0 -t 2:8300 -c 2:root "$IMAGE" >/dev/null
part() { sgdisk -i "$1" "$IMAGE" | awk -v f="$2" '$1 == f && $2 == "sector:" { print $3 }'; }
EFI_FIRST=$(part 1 First) EFI_LAST=$(part 1 Last)
ROOT_FIRST=$(part 2 First) ROOT_LAST=$(part 2 Last)
EFI_OFFSET=$((EFI_FIRST * 512))
EXT4_OFFSET=$((ROOT_FIRST * 512))
EXT4_BYTES=$(((ROOT_LAST - ROOT_FIRST + 1) * 512 / 4096 * 4096))

# --- EFI system partition: FAT32 with a few real binaries as boot files.
mkfs.vfat -F 32 -s 1 -n EFI --offset="$EFI_FIRST" "$IMAGE" $(((EFI_LAST - EFI_FIRST + 1) / 2)) >/dev/null 2>&1
mmd -i "$IMAGE@@$EFI_OFFSET" ::/EFI ::/EFI/BOOT ::/EFI/debian
if [[ -n $ROOTDIR ]]; then
    for f in "$ROOTDIR"/boot/vmlinuz-* "$ROOTDIR"/boot/initrd.img-*; do
        [[ -f $f ]] && mcopy -i "$IMAGE@@$EFI_OFFSET" "$f" "::/EFI/debian/$(basename "$f")"
    done
else
    n=0
    for f in /usr/bin/*; do
        [[ -f $f && ! -L $f ]] || continue
        mcopy -i "$IMAGE@@$EFI_OFFSET" "$f" "::/EFI/debian/$(basename "$f" | tr -c 'A-Za-z0-9._\n-' _)"
        n=$((n + 1))
        [[ $n -lt 12 ]] || break
    done
fi
mcopy -i "$IMAGE@@$EFI_OFFSET" /usr/bin/bash ::/EFI/BOOT/BOOTX64.EFI

# --- ext4 root file system from the staging directory.
mkfs.ext4 -q -F -b 4096 -L root -d "$CONTENT" \
    -E "offset=$EXT4_OFFSET,nodiscard,lazy_itable_init=1" \
    "$IMAGE" $((EXT4_BYTES / 1024))k
ALLOC=$(du -B1 "$IMAGE" | cut -f1)
echo "mkimage.sh: $IMAGE: logical $(stat -c %s "$IMAGE") bytes, allocated $ALLOC bytes" >&2
echo "EXT4_OFFSET=$EXT4_OFFSET EXT4_BYTES=$EXT4_BYTES EFI_OFFSET=$EFI_OFFSET"
