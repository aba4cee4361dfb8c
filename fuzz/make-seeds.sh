#!/usr/bin/env bash
# Regenerates the seed corpora under fuzz/seeds/ from the fixtures and small images built with
# the erofs-forge binary given as $1 (default target/debug/erofs-forge). Run from the repository
# root; the seeds are committed, so this is only needed when the formats change.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/erofs-forge}
seeds=fuzz/seeds
work=$(mktemp -d "$PWD/target/fuzz-seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT
rm -rf "$seeds"
mkdir -p "$seeds"/{v5_bootstrap,v6_bootstrap,blob_meta,tar_reader,roundtrip}

# small source: a few files, a symlink, a hardlink, xattrs where the filesystem allows
src=$work/src
mkdir -p "$src/d/e"
printf 'hello\n' >"$src/a"
head -c 9000 /dev/zero | tr '\0' 'x' >"$src/d/big"
ln -s ../a "$src/d/link"
ln "$src/a" "$src/d/e/hard"
mkfifo "$src/fifo"
setfattr -n user.k -v v "$src/a" 2>/dev/null || true

# bootstraps: upstream's and ours
cp fixtures/upstream/v5-zstd/bootstrap "$seeds/v5_bootstrap/upstream-v5-zstd"
cp fixtures/upstream/v5-tar-rafs/bootstrap "$seeds/v5_bootstrap/upstream-v5-tar-rafs"
for v in v6-zstd v6-lz4_block v6-tar-rafs v6-tar-tarfs; do
  cp "fixtures/upstream/$v/bootstrap" "$seeds/v6_bootstrap/upstream-$v"
done
for v in 5 6; do
  for c in none lz4_block zstd; do
    out=$work/b-$v-$c
    mkdir -p "$out"
    "$bin" create -l warn -v $v --compressor $c --chunk-size 0x1000 -D "$out" -B "$out/boot" "$src" >/dev/null
    cp "$out/boot" "$seeds/v${v}_bootstrap/small-$c"
    if [[ $v == 6 ]]; then
      # blob meta seeds: control byte, chunk count, uncompressed size, ci offset, stored array
      for blob in "$out"/*; do
        [[ $blob == "$out/boot" ]] && continue
        python3 - "$blob" "$seeds/blob_meta/ci-$c" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
h = b[-4096:]
magic, feat, comp, n, off, csize, usize = struct.unpack_from('<IIIIQQQ', h)
assert magic == 0xB10BB10B
ctl = (2 if feat & 4 else 0) | (comp & 3) << 2
seed = bytes([ctl]) + struct.pack('<IIQ', n, usize, off) + b[off:off + csize]
open(sys.argv[2], 'wb').write(seed)
PY
      done
    fi
  done
done
out=$work/inline
mkdir -p "$out"
"$bin" create -l warn --blob-inline-meta -D "$out" "$src" >/dev/null
python3 - "$out"/* "$seeds/blob_meta/inline-tail" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
open(sys.argv[2], 'wb').write(bytes([1]) + struct.pack('<IIQ', 0, 0, len(b)) + b[-512:])
PY
"$bin" create -l warn -t tar-tarfs -B "$seeds/v6_bootstrap/small-tarfs" fixtures/upstream/source-tar-input.tar >/dev/null 2>&1 || true

# tars: GNU, PAX, v7, sparse, long names
long=$src/$(printf 'n%.0s' {1..150})
mkdir -p "$long" && printf 'z' >"$long/f"
truncate -s 1M "$src/sparse" && printf 'data' | dd of="$src/sparse" bs=1 seek=600000 conv=notrunc 2>/dev/null
tar -C "$src" --format=gnu --exclude=./sparse -cf "$seeds/tar_reader/gnu.tar" .
tar -C "$src" --format=pax --exclude=./sparse -cf "$seeds/tar_reader/pax.tar" --xattrs .
tar -C "$src" --format=v7 -cf "$seeds/tar_reader/v7.tar" a d 2>/dev/null || true
tar -C "$src" --format=gnu --sparse -cf "$seeds/tar_reader/gnu-sparse.tar" sparse a
tar -C "$src" --format=pax --sparse -cf "$seeds/tar_reader/pax-sparse.tar" sparse a
ls -l "$seeds"/*
