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
mkdir -p "$seeds"/{blob_toc,prefetch_table,zran_meta,estargz_ref,encrypted_ci,oci_json} fuzz/bases
up=fixtures/upstream

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

# blob_toc: the ends of inline-meta blobs (upstream's converter blobs with a ToC, the plain
# inline-meta blob, ours), each after the number of zero bytes that stands for the rest
"$bin" create -l warn --blob-inline-meta --features blob-toc -t tar-rafs --blob "$work/toc.blob" \
  "$seeds/tar_reader/gnu.tar" >/dev/null
python3 - "$seeds/blob_toc" "$up/v6-blob-toc/blob.rafs" "$up/v6-targz-ref-inline/blob.rafs" \
  "$up"/v6-inline-meta/blobs/* "$out"/* "$work/toc.blob" <<'PY'
import os, struct, sys
for i, path in enumerate(sys.argv[2:]):
    b = open(path, 'rb').read()
    h = b[-512:]
    name = h[:100].rstrip(b'\0')
    size = int(h[124:136].rstrip(b'\0 ') or b'0', 8)
    keep = 16384 if name == b'rafs.blob.toc' else size + 512
    keep = min(len(b), keep)
    seed = struct.pack('<I', len(b) - keep) + b[-keep:]
    names = ['upstream-blob-toc', 'upstream-targz-ref-inline', 'upstream-inline-meta', 'inline', 'toc']
    open(os.path.join(sys.argv[1], names[i]), 'wb').write(seed)
PY

# prefetch_table: the bases the target patches (small images of each version with a prefetch
# table), and seeds holding their tables and upstream's, with pattern lists
printf '/d\n/a\n/missing\n' >"$work/prefetch.txt"
for v in 5 6; do
  mkdir -p "$work/p$v"
  "$bin" create -l warn -v $v --prefetch-policy fs -D "$work/p$v" -B fuzz/bases/prefetch-v$v \
    "$src" <"$work/prefetch.txt" >/dev/null
done
python3 - "$seeds/prefetch_table" fuzz/bases/prefetch-v5 fuzz/bases/prefetch-v6 \
  "$up/v5-prefetch-fs/bootstrap" "$up/v6-prefetch-fs/bootstrap" <<'PY'
import os, struct, sys
text = b'/d\n/a\n/missing\n'
for i, path in enumerate(sys.argv[2:]):
    b = open(path, 'rb').read()
    v6 = len(b) > 1028 and b[1024:1028] == b'\xe2\xe1\xf5\xe0'
    if v6:
        off, = struct.unpack_from('<Q', b, 1192); n, = struct.unpack_from('<I', b, 1200); size = n
    else:
        off, = struct.unpack_from('<Q', b, 40); n, = struct.unpack_from('<I', b, 60); size = 4 * n
    table = b[off:off + size]
    seed = struct.pack('<BIIH', int(v6) | 2, n, off, len(table)) + table + text
    names = ['base-v5', 'base-v6', 'upstream-v5-prefetch-fs', 'upstream-v6-prefetch-fs']
    open(os.path.join(sys.argv[1], names[i]), 'wb').write(seed)
PY

# zran_meta: the decompressed ci areas of targz-ref metas (upstream's, ours) with the start of
# their layers
gzip -9n <"$seeds/tar_reader/gnu.tar" >"$work/small.tar.gz"
mkdir -p "$work/zr" "$work/tr"
"$bin" create -l warn -t targz-ref -D "$work/zr" -B "$work/zr.boot" "$work/small.tar.gz" >/dev/null
"$bin" create -l warn -t targz-ref -D "$work/tr" -B "$work/tr.boot" "$seeds/tar_reader/gnu.tar" >/dev/null
python3 - "$seeds/zran_meta" "$up/v6-targz-ref/blobs" "$up/source-tar-input.tar.gz" \
  "$work/zr" "$work/small.tar.gz" "$work/tr" "$seeds/tar_reader/gnu.tar" <<'PY'
import os, struct, sys, zstandard
args, i = sys.argv[2:], 0
for d, layer in zip(args[::2], args[1::2]):
    layer = open(layer, 'rb').read()
    for f in sorted(os.listdir(d)):
        b = open(os.path.join(d, f), 'rb').read()
        if len(b) < 4096 or b[-4:] != b'\x0b\xb1\x0b\xb1':
            continue
        _, feat, comp, n, cioff, csize, usize, zoff, zsize, zcount = struct.unpack_from('<IIIIQQQQQI', b[-4096:])
        stored = b[-4096 - csize:-4096]
        raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=usize) if comp == 3 else stored
        seed = struct.pack('<BHIHII', int(feat & 8 != 0), n, zoff, zcount, zsize, len(raw)) + raw + layer[:65536]
        open(os.path.join(sys.argv[1], f'meta-{i}'), 'wb').write(seed)
        i += 1
PY

# estargz_ref: small layers: gzip, an eStargz one (a gzip member per file, the TOC entry and
# a landmark), a plain tar (tar-ref)
python3 - "$seeds/estargz_ref" "$work/small.tar.gz" "$seeds/tar_reader/gnu.tar" <<'PY'
import gzip, io, json, os, sys, tarfile
out = sys.argv[1]
open(os.path.join(out, 'targz'), 'wb').write(b'\x00' + open(sys.argv[2], 'rb').read())
open(os.path.join(out, 'estargz-as-targz'), 'wb').write(b'\x01' + open(sys.argv[2], 'rb').read())
open(os.path.join(out, 'plain-tar'), 'wb').write(b'\x01' + open(sys.argv[3], 'rb').read())
def member(name, data, kind=tarfile.REGTYPE):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode='w', format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo(name); ti.type = kind; ti.size = len(data); ti.mtime = 0
        t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    raw = b.getvalue()[:-1024]  # no end-of-archive blocks between members
    return gzip.compress(raw, mtime=0)
files = [('etc/', b'', tarfile.DIRTYPE), ('etc/hosts', b'127.0.0.1 localhost\n' * 3, tarfile.REGTYPE),
         ('bin/tool', bytes(range(256)) * 40, tarfile.REGTYPE), ('.prefetch.landmark', b'\x0f', tarfile.REGTYPE)]
body = b''.join(member(n, d, k) for n, d, k in files)
toc = json.dumps({'version': 1, 'entries': [{'name': n, 'type': 'reg'} for n, _, _ in files]}).encode()
body += member('stargz.index.json', toc) + gzip.compress(b'\0' * 1024, mtime=0)
open(os.path.join(out, 'estargz'), 'wb').write(b'\x00' + body)
open(os.path.join(out, 'estargz-4k'), 'wb').write(b'\x02' + body)
PY

# encrypted_ci: upstream's --encrypt chunk-info array decrypted (its key is in the bootstrap),
# its blob's start (as stored, and decrypted chunk by chunk for the target to seal again), and
# upstream's batch blob's array (in the clear) with the start of its blob
python3 - "$seeds/encrypted_ci" "$up/v6-encrypt/bootstrap" "$up"/v6-encrypt/blobs/* \
  "$up"/v6-batch/blobs/* <<'PY'
import os, struct, sys, zstandard
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
out, boot, blob, batch = sys.argv[1], *(open(p, 'rb').read() for p in sys.argv[2:5])
off, = struct.unpack_from('<Q', boot, 1160)
e = boot[off:off + 256]
key, iv = e[168:200], e[200:216]
ci_off, ci_csz, ci_usz = struct.unpack_from('<QQQ', e, 112)
def dec(b):
    d = Cipher(algorithms.AES(key), modes.XTS(iv)).decryptor()
    p = d.update(b) + d.finalize()
    if len(p) == 18 and p[16:] == b'\x78\x90':
        p = p[:16 - p[15]]
    return p
ci = zstandard.ZstdDecompressor().decompress(dec(blob[ci_off:ci_off + ci_csz]), max_output_size=ci_usz)
n = len(ci) // 24
region = blob[:65536]
plain = bytearray(region)
for i in range(n):
    u, c, _ = struct.unpack_from('<QQQ', ci, 24 * i)
    co, cs = c & 0xFF_FFFF_FFFF, (c >> 40) & 0xFFFFFF
    if co + cs <= len(region) and cs:
        p = dec(region[co:co + cs])
        plain[co:co + len(p)] = p
head = lambda ctl, ci, n, zoff=0, zcount=0: struct.pack('<BHIHH', ctl, n, zoff, zcount, len(ci)) + ci
open(os.path.join(out, 'v6-encrypt'), 'wb').write(head(2, ci, n) + region)
open(os.path.join(out, 'v6-encrypt-sealed'), 'wb').write(head(0x12, ci, n) + bytes(plain))
h = batch[-4096:]
_, feat, comp, n, cioff, csize, usize, zoff, zsize, zcount = struct.unpack_from('<IIIIQQQQQI', h)
ci = batch[cioff:cioff + csize]
if comp == 3:
    ci = zstandard.ZstdDecompressor().decompress(ci, max_output_size=usize)
open(os.path.join(out, 'v6-batch-sealed'), 'wb').write(head(0x16, ci, n, zoff, zcount) + batch[:65536])
PY

# oci_json: an OCI layout (one image, then two platforms behind a nested index), a docker
# save archive, each as the target's file list and as a tar
python3 - "$seeds/oci_json" <<'PY'
import hashlib, io, json, os, struct, sys, tarfile
out = sys.argv[1]
def layer():
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode='w') as t:
        ti = tarfile.TarInfo('hello.txt'); ti.size = 6; t.addfile(ti, io.BytesIO(b'hello\n'))
    return b.getvalue()[:2048]
def blob(files, data):
    d = hashlib.sha256(data).hexdigest()
    files.append((f'blobs/sha256/{d}', data))
    return {'digest': f'sha256:{d}', 'size': len(data)}
def image(files, arch, variant=None):
    l = blob(files, layer())
    p = {'os': 'linux', 'architecture': arch}
    if variant: p['variant'] = variant
    cfg = blob(files, json.dumps({**p, 'rootfs': {'type': 'layers', 'diff_ids': [l['digest']]}}).encode())
    m = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
         'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', **cfg},
         'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar', **l}],
         'annotations': {'org.opencontainers.image.title': 't'}}
    d = blob(files, json.dumps(m).encode())
    return {'mediaType': 'application/vnd.oci.image.manifest.v1+json', **d, 'platform': p}
def layout(nested):
    files = [('oci-layout', b'{"imageLayoutVersion":"1.0.0"}')]
    if nested:
        inner = {'schemaVersion': 2, 'manifests': [image(files, 'amd64'), image(files, 'arm64', 'v8')]}
        d = blob(files, json.dumps(inner).encode())
        top = [{'mediaType': 'application/vnd.oci.image.index.v1+json', **d,
                'annotations': {'org.opencontainers.image.ref.name': 'latest'}}]
    else:
        m = image(files, 'amd64')
        m['annotations'] = {'org.opencontainers.image.ref.name': 'latest'}
        top = [m]
    files.append(('index.json', json.dumps({'schemaVersion': 2, 'manifests': top}).encode()))
    return files
def docker():
    files = [('layer.tar', layer())]
    cfg = json.dumps({'os': 'linux', 'architecture': 'amd64',
                      'rootfs': {'type': 'layers', 'diff_ids': ['sha256:' + hashlib.sha256(layer()).hexdigest()]}}).encode()
    files.append(('config.json', cfg))
    files.append(('manifest.json', json.dumps([{'Config': 'config.json', 'RepoTags': ['x:latest'], 'Layers': ['layer.tar']}]).encode()))
    return files
def records(files):
    return b''.join(struct.pack('<B', len(n)) + n.encode() + struct.pack('<H', len(d)) + d for n, d in files)
def tar(files):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode='w', format=tarfile.GNU_FORMAT) as t:
        for n, d in files:
            ti = tarfile.TarInfo(n); ti.size = len(d); t.addfile(ti, io.BytesIO(d))
    return b.getvalue()
for name, files in [('layout', layout(False)), ('nested', layout(True)), ('docker', docker())]:
    open(os.path.join(out, name), 'wb').write(b'\x00' + records(files))
    open(os.path.join(out, name + '-ref'), 'wb').write(b'\x05' + records(files))
    open(os.path.join(out, name + '-tar'), 'wb').write(b'\x08' + tar(files))
PY
ls -l "$seeds"/* fuzz/bases
