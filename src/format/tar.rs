//! Tar header blocks, numeric fields and PAX records. Pure parsing: no I/O happens here.
//!
//! Layouts (POSIX.1-2001 ustar/pax, GNU tar's `ustar  ` variant and its sparse extension) are
//! summarised in formats/tar.md.

/// Size of every tar block.
pub const BLOCK: usize = 512;

/// Offsets and lengths of the fields of a header block.
pub mod field {
    /// `name[100]`.
    pub const NAME: (usize, usize) = (0, 100);
    /// `mode[8]`.
    pub const MODE: (usize, usize) = (100, 8);
    /// `uid[8]`.
    pub const UID: (usize, usize) = (108, 8);
    /// `gid[8]`.
    pub const GID: (usize, usize) = (116, 8);
    /// `size[12]`.
    pub const SIZE: (usize, usize) = (124, 12);
    /// `mtime[12]`.
    pub const MTIME: (usize, usize) = (136, 12);
    /// `chksum[8]`.
    pub const CHKSUM: (usize, usize) = (148, 8);
    /// `typeflag`.
    pub const TYPEFLAG: usize = 156;
    /// `linkname[100]`.
    pub const LINKNAME: (usize, usize) = (157, 100);
    /// `magic[6]` + `version[2]`.
    pub const MAGIC: (usize, usize) = (257, 8);
    /// `devmajor[8]`.
    pub const DEVMAJOR: (usize, usize) = (329, 8);
    /// `devminor[8]`.
    pub const DEVMINOR: (usize, usize) = (337, 8);
    /// ustar `prefix[155]` (POSIX magic only; GNU headers keep other fields there).
    pub const PREFIX: (usize, usize) = (345, 155);
    /// Old GNU sparse map in the header: 4 × (offset[12], numbytes[12]).
    pub const GNU_SPARSE: usize = 386;
    /// Old GNU: more sparse map blocks follow.
    pub const GNU_ISEXTENDED: usize = 482;
    /// Old GNU: size of the expanded sparse file.
    pub const GNU_REALSIZE: (usize, usize) = (483, 12);
}

/// Type flags this reader knows.
pub mod kind {
    /// Regular file (POSIX).
    pub const REGULAR: u8 = b'0';
    /// Regular file (pre-POSIX).
    pub const REGULAR_OLD: u8 = 0;
    /// Hard link to an earlier entry.
    pub const HARDLINK: u8 = b'1';
    /// Symbolic link.
    pub const SYMLINK: u8 = b'2';
    /// Character device.
    pub const CHAR: u8 = b'3';
    /// Block device.
    pub const BLOCK: u8 = b'4';
    /// Directory.
    pub const DIRECTORY: u8 = b'5';
    /// FIFO.
    pub const FIFO: u8 = b'6';
    /// Contiguous file (treated as a regular file).
    pub const CONTIGUOUS: u8 = b'7';
    /// PAX extended header for the next entry.
    pub const PAX_LOCAL: u8 = b'x';
    /// PAX global extended header.
    pub const PAX_GLOBAL: u8 = b'g';
    /// GNU long name for the next entry.
    pub const GNU_LONGNAME: u8 = b'L';
    /// GNU long link name for the next entry.
    pub const GNU_LONGLINK: u8 = b'K';
    /// Old GNU sparse file.
    pub const GNU_SPARSE: u8 = b'S';
    /// GNU incremental dump directory (a directory whose data lists its contents).
    pub const GNU_DUMPDIR: u8 = b'D';
    /// GNU volume label (not a file).
    pub const GNU_VOLUME: u8 = b'V';
}

/// The header magic variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Magic {
    /// POSIX `ustar\0` `00`: the prefix field extends the name.
    Posix,
    /// GNU `ustar  \0`: no prefix field.
    Gnu,
    /// Pre-POSIX (v7): neither.
    V7,
}

/// A field's raw bytes.
pub fn raw(h: &[u8; BLOCK], f: (usize, usize)) -> &[u8] {
    &h[f.0..f.0 + f.1]
}

/// A NUL-terminated string field (bytes up to the first NUL).
pub fn cstr(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|b| *b == 0) {
        Some(n) => &bytes[..n],
        None => bytes,
    }
}

/// The header's magic.
pub fn magic(h: &[u8; BLOCK]) -> Magic {
    match raw(h, field::MAGIC) {
        b"ustar  \0" => Magic::Gnu,
        m if &m[..6] == b"ustar\0" => Magic::Posix,
        _ => Magic::V7,
    }
}

/// Whether the block is all zeros (an end-of-archive block).
pub fn is_zero(h: &[u8; BLOCK]) -> bool {
    h.iter().all(|b| *b == 0)
}

/// Checks the header checksum: the sum of all bytes with the checksum field read as spaces,
/// as unsigned bytes (POSIX) or, for old archivers, as signed bytes.
pub fn checksum_ok(h: &[u8; BLOCK]) -> Result<(), String> {
    let stored = parse_octal(raw(h, field::CHKSUM))?;
    let (start, len) = field::CHKSUM;
    let mut unsigned: i64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in h.iter().enumerate() {
        let b = if (start..start + len).contains(&i) {
            b' '
        } else {
            *b
        };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || stored == signed {
        Ok(())
    } else {
        Err(format!(
            "header checksum is {stored:#o}, the header sums to {unsigned:#o}: not a tar header"
        ))
    }
}

fn parse_octal(bytes: &[u8]) -> Result<i64, String> {
    let mut value: i64 = 0;
    let mut digits = 0;
    let mut ended = false;
    for &b in bytes {
        match b {
            b'0'..=b'7' if !ended => {
                value = value
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(i64::from(b - b'0')))
                    .ok_or_else(|| "octal number too large".to_string())?;
                digits += 1;
            }
            b' ' if digits == 0 => {}
            b' ' | 0 => ended = true,
            _ if ended => {}
            _ => return Err(format!("invalid byte {b:#04x} in an octal field")),
        }
    }
    Ok(value)
}

/// A numeric header field: octal text, or GNU base-256 (first byte `0x80` positive, `0xff`
/// negative, two's complement big-endian). Values that do not fit an `i64` are errors.
pub fn number(bytes: &[u8]) -> Result<i64, String> {
    match bytes.first() {
        Some(&first) if first & 0x80 != 0 => {
            // two's complement, big-endian; bit 6 of the first byte is the sign
            let inv = if first & 0x40 != 0 { 0xff } else { 0 };
            let mut x: u64 = 0;
            for (i, &c) in bytes.iter().enumerate() {
                let mut c = c ^ inv;
                if i == 0 {
                    c &= 0x7f;
                }
                if x >> 56 != 0 {
                    return Err("base-256 number out of range".into());
                }
                x = x << 8 | u64::from(c);
            }
            if x >> 63 != 0 {
                return Err("base-256 number out of range".into());
            }
            Ok(if inv != 0 { !(x as i64) } else { x as i64 })
        }
        _ => parse_octal(bytes),
    }
}

/// A numeric field that must be non-negative and fit `u64`.
pub fn unsigned(bytes: &[u8], what: &str) -> Result<u64, String> {
    let v = number(bytes).map_err(|e| format!("{what}: {e}"))?;
    u64::try_from(v).map_err(|_| format!("{what} is negative ({v})"))
}

// ---------------------------------------------------------------- writing
//
// Every tar the tool writes is built on the `tar` crate's `Header`; these helpers cover the
// bytes the crate spells differently from what the tool has always written (formats/tar.md §5).

/// Copies `name` into the header's `name[100]` field byte for byte (truncated to 100 bytes).
/// The crate's `set_path` normalises the path (`./a` becomes `a`), which would change the
/// names `unpack` writes.
pub fn set_name(h: &mut ::tar::Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

/// Whether `value` fits an octal field of `len` bytes (`len - 1` digits and a NUL). Larger
/// values go into a PAX record: the crate's setters would switch to GNU base-256 instead.
pub fn fits_octal(value: u64, len: usize) -> bool {
    let digits = len.saturating_sub(1).min(21) as u32;
    value < 1u64 << (3 * digits)
}

/// Sets the checksum as GNU tar writes it in ustar headers: six octal digits, NUL, space.
/// The crate's `set_cksum` writes seven digits and a NUL, a different byte sequence.
pub fn set_ustar_checksum(h: &mut ::tar::Header) {
    h.as_old_mut().cksum = *b"        ";
    let sum: u32 = h.as_bytes().iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    h.as_old_mut().cksum.copy_from_slice(text.as_bytes());
}

/// Appends one PAX record `"<len> <key>=<value>\n"`, the length counting itself.
pub fn push_pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// One `key=value` record of a PAX extended header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaxRecord<'a> {
    /// The keyword.
    pub key: &'a [u8],
    /// The value (may hold any byte, newlines included).
    pub value: &'a [u8],
}

/// Splits a PAX extended header body into records. Each record is `"<len> <key>=<value>\n"`
/// where `<len>` counts the whole record: records are cut by that length, never at newlines
/// (values may contain newlines). Trailing NUL padding is accepted.
pub fn pax_records(body: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut at = 0usize;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let space = rest
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or_else(|| format!("PAX record at byte {at}: no length"))?;
        let len_text = &rest[..space];
        if len_text.is_empty() || !len_text.iter().all(u8::is_ascii_digit) {
            return Err(format!("PAX record at byte {at}: invalid length"));
        }
        let len: usize = std::str::from_utf8(len_text)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("PAX record at byte {at}: invalid length"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(format!(
                "PAX record at byte {at}: length {len} does not fit the {} bytes left",
                rest.len()
            ));
        }
        let record = &rest[space + 1..len];
        let Some((&b'\n', kv)) = record.split_last() else {
            return Err(format!(
                "PAX record at byte {at}: length {len} does not end at a newline"
            ));
        };
        let eq = kv
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| format!("PAX record at byte {at}: no '='"))?;
        if eq == 0 {
            return Err(format!("PAX record at byte {at}: empty keyword"));
        }
        out.push(PaxRecord {
            key: &kv[..eq],
            value: &kv[eq + 1..],
        });
        rest = &rest[len..];
        at += len;
    }
    Ok(out)
}

/// A PAX decimal integer (`size`, `uid`, `gid`, GNU sparse numbers).
pub fn pax_unsigned(value: &[u8], key: &str) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "PAX {key}={:?} is not a decimal number",
                String::from_utf8_lossy(value)
            )
        })
}

/// A PAX time (`[-]seconds[.fraction]`) as seconds and nanoseconds (the nanoseconds are always
/// positive: -1.5 is (-2, 500000000)). Digits beyond nanoseconds are dropped.
pub fn pax_time(value: &[u8]) -> Result<(i64, u32), String> {
    let bad = || format!("PAX time {:?} is invalid", String::from_utf8_lossy(value));
    let (negative, digits) = match value.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, value),
    };
    let (int, frac) = match digits.iter().position(|b| *b == b'.') {
        Some(p) => (&digits[..p], &digits[p + 1..]),
        None => (digits, &[][..]),
    };
    if int.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let secs: i64 = std::str::from_utf8(int)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut nsec: u32 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map(|d| u32::from(d - b'0')).unwrap_or(0);
    }
    Ok(if !negative {
        (secs, nsec)
    } else if nsec == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nsec)
    })
}

/// Decodes a `%XX` URL-encoded name (LIBARCHIVE.xattr.* keys).
pub fn url_decode(s: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad %-escape in a LIBARCHIVE.xattr name".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The longest name component a filesystem entry may have.
pub const MAX_COMPONENT: usize = 255;
/// The longest path accepted (Linux `PATH_MAX` - 1): it also bounds how many directories one
/// entry can imply, and so the memory a small archive can make the tree take.
pub const MAX_PATH: usize = 4095;

/// Splits an archive path into its components: leading `/` and `.` components are dropped
/// (so `./`, `/` and `.` name the root, giving no components). Rejected: an empty name, a NUL
/// byte, a `..` component, a component longer than 255 bytes.
pub fn split_path(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    if path.is_empty() {
        return Err("empty name".into());
    }
    if path.contains(&0) {
        return Err("name holds a NUL byte".into());
    }
    if path.len() > MAX_PATH {
        return Err(format!(
            "name is {} bytes long, the limit is {MAX_PATH}",
            path.len()
        ));
    }
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("name has a '..' component".into()),
            c if c.len() > MAX_COMPONENT => {
                return Err(format!(
                    "a name component is {} bytes long, the limit is {MAX_COMPONENT}",
                    c.len()
                ))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// One data segment of a sparse file: `len` bytes at `offset` of the expanded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the expanded file.
    pub offset: u64,
    /// Bytes of data stored in the archive for it.
    pub len: u64,
}

/// Reads up to 4 (header) or 21 (extension block) old-GNU sparse entries starting at `at`.
pub fn gnu_sparse_entries(
    block: &[u8; BLOCK],
    at: usize,
    count: usize,
) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    for i in 0..count {
        let o = at + 24 * i;
        let off = &block[o..o + 12];
        let len = &block[o + 12..o + 24];
        if off[0] == 0 && len[0] == 0 {
            break;
        }
        out.push(Segment {
            offset: unsigned(off, "sparse offset")?,
            len: unsigned(len, "sparse length")?,
        });
    }
    Ok(out)
}

/// Checks a sparse map: segments in increasing order, not overlapping, inside `real_size`,
/// together exactly `stored` bytes.
pub fn check_sparse_map(map: &[Segment], real_size: u64, stored: u64) -> Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for s in map {
        let seg_end = s
            .offset
            .checked_add(s.len)
            .ok_or_else(|| "sparse segment overflows".to_string())?;
        if s.offset < end || seg_end > real_size {
            return Err(format!(
                "sparse segment {}+{} is out of order or beyond the file size {real_size}",
                s.offset, s.len
            ));
        }
        end = seg_end;
        total = total
            .checked_add(s.len)
            .ok_or_else(|| "sparse map overflows".to_string())?;
    }
    if total != stored {
        return Err(format!(
            "sparse map describes {total} bytes of data, the archive holds {stored}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_base256() {
        assert_eq!(number(b"0000644\0"), Ok(0o644));
        assert_eq!(number(b"   644 \0"), Ok(0o644));
        assert_eq!(number(b"\0\0\0\0\0\0\0\0"), Ok(0));
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Ok(256));
        assert_eq!(number(&[0xff; 12]), Ok(-1));
        assert_eq!(number(&[0xff, 0xff, 0xff, 0xfe]), Ok(-2));
        assert!(
            number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .is_err()
        );
        assert!(number(b"12x4").is_err());
        assert!(unsigned(&[0xff; 12], "size").is_err());
    }

    #[test]
    fn pax_records_cut_by_length_not_newline() {
        let body = b"20 path=a\nb/c\nd.txt\n12 uid=1000\n";
        // "20 path=a\nb/c\nd.txt\n" is 20 bytes
        let r = pax_records(body).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].key, b"path");
        assert_eq!(r[0].value, b"a\nb/c\nd.txt");
        assert_eq!(r[1].value, b"1000");
        for bad in [
            &b"99 path=x\n"[..],
            b"5 path=x\n",
            b"x path=x\n",
            b"11 path=x\n",
            b"9 pathx=\n\n",
            b"9 =value\n",
        ] {
            assert!(
                pax_records(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(pax_records(b"10 a=bcde\n\0\0\0").unwrap().len(), 1);
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1704164645.123456789"),
            Ok((1704164645, 123456789))
        );
        assert_eq!(pax_time(b"946684799.5"), Ok((946684799, 500000000)));
        assert_eq!(pax_time(b"12"), Ok((12, 0)));
        assert_eq!(pax_time(b"-1.5"), Ok((-2, 500000000)));
        assert_eq!(pax_time(b"1.1234567891"), Ok((1, 123456789)));
        assert!(pax_time(b"1e9").is_err());
        assert!(pax_time(b"").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(
            split_path(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert_eq!(
            split_path(b"/etc/passwd").unwrap(),
            vec![&b"etc"[..], b"passwd"]
        );
        assert!(split_path(b"./").unwrap().is_empty());
        assert!(split_path(b"").is_err());
        assert!(split_path(b"../x").is_err());
        assert!(split_path(b"a/../../x").is_err());
        assert!(split_path(b"a\0b").is_err());
        assert!(split_path(&[b'n'; 256]).is_err());
        assert!(split_path(&[b'n'; 255]).is_ok());
        let deep: Vec<u8> = b"a/".repeat(2048);
        assert!(split_path(&deep).is_err());
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode(b"user.a%3Db%25").unwrap(), b"user.a=b%");
        assert!(url_decode(b"user.%G1").is_err());
    }

    // Where the `tar` crate's header setters spell bytes differently from what the tool writes
    // (formats/tar.md §5): each test shows the crate's bytes next to ours.

    #[test]
    fn crate_set_path_drops_dot_slash() {
        let mut h = ::tar::Header::new_ustar();
        h.set_path("./etc/passwd").unwrap();
        assert_eq!(cstr(&h.as_old().name), b"etc/passwd");
        let mut ours = ::tar::Header::new_ustar();
        set_name(&mut ours, b"./etc/passwd");
        assert_eq!(cstr(&ours.as_old().name), b"./etc/passwd");
    }

    #[test]
    fn crate_set_cksum_is_seven_digits_and_nul() {
        let mut h = ::tar::Header::new_ustar();
        h.set_size(5);
        let mut ours = h.clone();
        h.set_cksum();
        set_ustar_checksum(&mut ours);
        assert_eq!(h.as_old().cksum[7], 0);
        assert_eq!(&ours.as_old().cksum[6..], b"\0 ");
        assert_eq!(&h.as_old().cksum[1..7], &ours.as_old().cksum[..6]);
        checksum_ok(ours.as_bytes()).unwrap();
    }

    #[test]
    fn crate_large_numbers_are_base256() {
        let mut h = ::tar::Header::new_ustar();
        h.set_uid(1 << 21);
        h.set_size(1 << 33);
        assert_eq!(h.as_old().uid[0], 0x80);
        assert_eq!(h.as_old().size[0], 0x80);
        assert!(fits_octal((1 << 21) - 1, 8) && !fits_octal(1 << 21, 8));
        assert!(fits_octal((1 << 33) - 1, 12) && !fits_octal(1 << 33, 12));
    }

    #[test]
    fn crate_long_names_are_gnu_longname_not_pax() {
        // the crate writes no PAX headers: a name too long for ustar's prefix + name becomes a
        // GNU `L` entry, which POSIX readers may not know; unpack writes a PAX `path`
        let mut b = ::tar::Builder::new(Vec::new());
        let mut h = ::tar::Header::new_ustar();
        h.set_size(0);
        let long = "d/".repeat(150) + "f";
        b.append_data(&mut h, &long, std::io::empty()).unwrap();
        let out = b.into_inner().unwrap();
        let first: &[u8; BLOCK] = out[..BLOCK].try_into().unwrap();
        assert_eq!(first[field::TYPEFLAG], kind::GNU_LONGNAME);
        let mut records = Vec::new();
        push_pax_record(&mut records, "path", long.as_bytes());
        assert_eq!(pax_records(&records).unwrap()[0].value, long.as_bytes());
    }
}
