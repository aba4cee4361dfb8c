//! The index of an EROFS compressed file (formats/rafs-v6.md §19.1): where each extent starts
//! and how it is stored, encoded as the compacted lcluster indexes erofs-utils writes (2 or 4
//! bytes per 4 KiB lcluster rather than 8), which is what keeps the metadata of a compressed
//! image as small as mkfs.erofs's.

use zerocopy::IntoBytes;

use crate::error::{Error, Result};
use crate::format::erofs_z::*;

/// Logical cluster size: one 4 KiB block.
const LCLUSTER: u64 = 4096;
/// Bits of an entry's value; its type is in the two bits above.
const LO_BITS: u32 = 12;

/// One extent of a compressed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentHead {
    /// Its first byte in the file.
    pub start: u64,
    /// Its first block (absolute once relocated).
    pub blkaddr: u32,
    /// Blocks of its compressed form; `None`: one block stored plain.
    pub compressed: Option<u32>,
}

/// Every extent of one compressed file, in file order, and what its map header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentMap {
    /// Algorithm code of the compressed extents.
    pub algorithm: u8,
    /// The file's size.
    pub size: u64,
    /// Its extents, the first starting at 0.
    pub heads: Vec<ExtentHead>,
}

/// One lcluster's index before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// An extent starts here, `clusterofs` bytes in.
    Head { plain: bool, clusterofs: u16 },
    /// Inside an extent: `back` lclusters after its head (or, in the first after a
    /// compressed head, `D0_CBLKCNT | blocks`), `on` before the next head.
    NonHead { back: u32, on: u32 },
}

impl ExtentMap {
    /// lclusters the index has: one per started 4 KiB of the file.
    pub fn lclusters(&self) -> u64 {
        self.size.div_ceil(LCLUSTER)
    }

    /// Adds `blocks` to every block address (data written before its final place is known).
    pub fn relocate(&mut self, blocks: u64) -> Result<()> {
        for h in &mut self.heads {
            h.blkaddr = u32::try_from(u64::from(h.blkaddr) + blocks)
                .map_err(|_| Error::Limit("image larger than 2^32 blocks".into()))?;
        }
        Ok(())
    }

    /// Each lcluster's entry, and for each extent the lcluster that records its block count
    /// (the first non-head of a multi-block one, else its head): checks the shapes the
    /// kernel can index.
    fn entries(&self) -> Result<(Vec<Entry>, Vec<u64>)> {
        let total = self.lclusters();
        let mut entries = Vec::with_capacity(total as usize);
        let mut markers = Vec::with_capacity(self.heads.len());
        for (i, h) in self.heads.iter().enumerate() {
            let lcn = h.start / LCLUSTER;
            let next = self.heads.get(i + 1).map_or(total, |n| n.start / LCLUSTER);
            let bad = |why: &str| {
                Err(Error::Internal(format!(
                    "EROFS extent at byte {} of a {}-byte file: {why}",
                    h.start, self.size
                )))
            };
            if lcn as usize != entries.len() || next <= lcn {
                return bad("not the only extent starting in its lcluster");
            }
            if next - lcn > u64::from(D0_CBLKCNT) {
                return bad("longer than 2048 lclusters");
            }
            match h.compressed {
                None if next != lcn + 1 => return bad("a plain block spanning lclusters"),
                Some(k) if k > 1 && next == lcn + 1 => {
                    return bad("several blocks but no lcluster to count them")
                }
                _ => {}
            }
            entries.push(Entry::Head {
                plain: h.compressed.is_none(),
                clusterofs: (h.start % LCLUSTER) as u16,
            });
            markers.push(if next > lcn + 1 { lcn + 1 } else { lcn });
            for m in lcn + 1..next {
                let back = match h.compressed {
                    Some(k) if m == lcn + 1 => D0_CBLKCNT | k,
                    _ => (m - lcn) as u32,
                };
                let on = (next - m) as u32;
                entries.push(Entry::NonHead { back, on });
            }
        }
        if entries.len() as u64 != total {
            return Err(Error::Internal(format!(
                "EROFS extents of a {}-byte file cover {} lclusters, not {total}",
                self.size,
                entries.len()
            )));
        }
        Ok((entries, markers))
    }

    /// The map header and the compacted indexes, for a file whose inode (with its xattrs)
    /// ends at byte `inode_end` of the image: the indexes start 32-byte aligned after a few
    /// 4-byte ones, as the reader computes from that position.
    pub fn encode(&self, inode_end: u64) -> Result<Vec<u8>> {
        let (entries, markers) = self.entries()?;
        let split = Split::of(self.lclusters(), inode_end);
        let header = MapHeader {
            fragment_off: 0.into(),
            advise: (ADVISE_COMPACTED_2B | ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2).into(),
            algorithm: self.algorithm,
            clusterbits: 0,
        };
        let mut out = Vec::with_capacity(compact_len(self.lclusters(), inode_end) as usize);
        out.extend_from_slice(header.as_bytes());
        let mut at = 0u64;
        for (count, vcnt) in [(split.first, 2), (split.two, 16), (split.last, 2)] {
            let end = at + count;
            while at < end {
                let pack: Vec<Option<Entry>> = (at..at + vcnt)
                    .map(|l| entries.get(l as usize).copied().filter(|_| l < end))
                    .collect();
                out.extend_from_slice(&self.pack(&pack, self.base(&markers, at)));
                at += vcnt;
            }
            at = end;
        }
        Ok(out)
    }

    /// The block the reader counts a pack's heads from: that of the first extent whose
    /// block count is recorded in this pack or later (the reader adds the counts it meets
    /// before a head within the pack).
    fn base(&self, markers: &[u64], pack_start: u64) -> u32 {
        let first = markers.iter().position(|&m| m >= pack_start);
        match first {
            Some(i) => self.heads[i].blkaddr,
            None => self
                .heads
                .last()
                .map_or(0, |h| h.blkaddr.saturating_add(h.compressed.unwrap_or(1))),
        }
    }

    /// One pack: `vcnt` entries of `bits` bits each (2 type bits over 12 value bits), then
    /// the base block. The last entry of a pack holds a non-head's distance on rather than
    /// back (the reader derives it from the entry before).
    fn pack(&self, entries: &[Option<Entry>], base: u32) -> Vec<u8> {
        let vcnt = entries.len();
        let size = if vcnt == 2 { 8 } else { 32 };
        let bits = ((size - 4) * 8 / vcnt) as u32;
        let mut out = vec![0u8; size];
        for (i, e) in entries.iter().enumerate() {
            let v: u32 = match *e {
                None => 0,
                Some(Entry::Head { plain, clusterofs }) => {
                    let kind = if plain { TYPE_PLAIN } else { TYPE_HEAD1 };
                    u32::from(kind) << LO_BITS | u32::from(clusterofs)
                }
                Some(Entry::NonHead { back, on }) => {
                    let lo = if back & D0_CBLKCNT != 0 || i + 1 != vcnt {
                        back
                    } else {
                        on.min(D0_CBLKCNT - 1)
                    };
                    u32::from(TYPE_NONHEAD) << LO_BITS | lo
                }
            };
            let pos = bits as usize * i;
            let word = u32::from_le_bytes([
                out[pos / 8],
                out[pos / 8 + 1],
                out.get(pos / 8 + 2).copied().unwrap_or(0),
                0,
            ]) | v << (pos % 8);
            let bytes = word.to_le_bytes();
            out[pos / 8] = bytes[0];
            out[pos / 8 + 1] = bytes[1];
            if let Some(b) = out.get_mut(pos / 8 + 2).filter(|_| pos / 8 + 2 < size - 4) {
                *b = bytes[2];
            }
        }
        out[size - 4..].copy_from_slice(&base.to_le_bytes());
        out
    }
}

/// How a compacted index divides its lclusters: 4-byte entries up to a 32-byte boundary,
/// 2-byte ones in packs of 16, 4-byte ones for the rest.
struct Split {
    first: u64,
    two: u64,
    last: u64,
}

impl Split {
    fn of(total: u64, inode_end: u64) -> Split {
        let ebase = inode_end.div_ceil(8) * 8 + 8;
        let initial = ((32 - ebase % 32) / 4) & 7;
        if initial >= total {
            return Split {
                first: total,
                two: 0,
                last: 0,
            };
        }
        let two = (total - initial) / 16 * 16;
        Split {
            first: initial,
            two,
            last: total - initial - two,
        }
    }
}

/// Bytes of the map header and compacted indexes of `lclusters` lclusters after an inode
/// ending at `inode_end` (a multiple of 8).
pub fn compact_len(lclusters: u64, inode_end: u64) -> u64 {
    let s = Split::of(lclusters, inode_end);
    8 + 4 * s.first.next_multiple_of(2) + 2 * s.two + 4 * s.last.next_multiple_of(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes lcluster `lcn` as the kernel's compacted reader does (fs/erofs/zmap.c):
    /// its type, value and, for a head, block address.
    fn read(bytes: &[u8], total: u64, inode_end: u64, lcn: u64) -> (u16, u32, Option<u32>) {
        let ebase = inode_end.div_ceil(8) * 8 + 8;
        let initial = ((32 - ebase % 32) / 4) & 7;
        let two = if initial < total {
            (total - initial) / 16 * 16
        } else {
            0
        };
        let (mut pos, mut l, mut shift) = (8u64, lcn, 2);
        if l >= initial {
            pos += initial * 4;
            l -= initial;
            if l < two {
                shift = 1;
            } else {
                pos += two * 2;
                l -= two;
            }
        }
        pos += l << shift;
        let vcnt: u64 = if shift == 2 { 2 } else { 16 };
        let packsize = vcnt << shift;
        // the pack's position counts from the image, where ebase is what was aligned
        let abs = pos - 8 + ebase;
        let start = (pos - (abs % packsize)) as usize;
        let i = ((abs % packsize) >> shift) as usize;
        let bits = ((packsize - 4) * 8 / vcnt) as usize;
        let pack = &bytes[start..start + packsize as usize];
        let get = |i: usize| {
            let p = bits * i;
            let w = u32::from_le_bytes([
                pack[p / 8],
                pack[p / 8 + 1],
                *pack.get(p / 8 + 2).unwrap_or(&0),
                0,
            ]) >> (p % 8);
            (((w >> 12) & 3) as u16, w & 0xfff)
        };
        let (kind, lo) = get(i);
        if kind == TYPE_NONHEAD {
            return (kind, lo, None);
        }
        let mut nblk = 0;
        let mut j = i as i64;
        while j > 0 {
            j -= 1;
            let (k, lo) = get(j as usize);
            if k == TYPE_NONHEAD {
                if lo & D0_CBLKCNT != 0 {
                    j -= 1;
                    nblk += lo & !D0_CBLKCNT;
                    continue;
                }
                assert!(lo > 1, "plain d0 of 1 under big pclusters");
                j -= i64::from(lo) - 2;
                continue;
            }
            nblk += 1;
        }
        let base = u32::from_le_bytes(pack[packsize as usize - 4..].try_into().unwrap());
        (kind, lo, Some(base + nblk))
    }

    /// Extents of every shape (multi-block compressed, one-block compressed, plain pieces
    /// shifted off the lcluster, one cut at the file's end), over every alignment of the
    /// inode's end: the kernel's decoding gives back each head's type, offset and block.
    #[test]
    fn compacted_indexes_decode_as_the_kernel_reads_them() {
        let mut heads = Vec::new();
        let mut start = 0u64;
        let mut blk = 100u32;
        // a repeating pattern of shapes, for a long file
        for n in 0..200u64 {
            let (len, compressed) = match n % 5 {
                0 => (70_000 + n * 37, Some(5)),
                1 => (4096, None),
                2 => (4096, None),
                3 => (6000, Some(1)),
                _ => (200_000 + n, Some(16)),
            };
            heads.push(ExtentHead {
                start,
                blkaddr: blk,
                compressed,
            });
            start += len;
            blk += compressed.unwrap_or(1);
        }
        // end on a plain piece that starts an lcluster
        let size = start.next_multiple_of(LCLUSTER) + 100;
        heads.push(ExtentHead {
            start,
            blkaddr: blk,
            compressed: None,
        });
        heads.push(ExtentHead {
            start: start.next_multiple_of(LCLUSTER),
            blkaddr: blk + 1,
            compressed: None,
        });
        let map = ExtentMap {
            algorithm: 0,
            size,
            heads,
        };
        for inode_end in (64..160).step_by(4) {
            let bytes = map.encode(inode_end).unwrap();
            assert_eq!(bytes.len() as u64, compact_len(map.lclusters(), inode_end));
            for h in &map.heads {
                let lcn = h.start / LCLUSTER;
                let (kind, lo, blkaddr) = read(&bytes, map.lclusters(), inode_end, lcn);
                let want = if h.compressed.is_some() {
                    TYPE_HEAD1
                } else {
                    TYPE_PLAIN
                };
                assert_eq!((kind, lo), (want, (h.start % LCLUSTER) as u32), "{h:?}");
                assert_eq!(blkaddr, Some(h.blkaddr), "{h:?} at inode end {inode_end}");
            }
        }
    }

    /// Shapes the kernel cannot index are refused, not written.
    #[test]
    fn unindexable_extents_are_refused() {
        let map = |heads: Vec<ExtentHead>, size| ExtentMap {
            algorithm: 0,
            size,
            heads,
        };
        let h = |start, compressed| ExtentHead {
            start,
            blkaddr: 0,
            compressed,
        };
        // two extents starting in one lcluster
        assert!(map(vec![h(0, Some(1)), h(100, None)], 8192)
            .encode(64)
            .is_err());
        // a plain block running into an lcluster with no head
        assert!(map(vec![h(0, None)], 8192).encode(64).is_err());
        // several blocks with no non-head to count them
        assert!(map(vec![h(0, Some(2)), h(4096, None)], 8192)
            .encode(64)
            .is_err());
    }
}
