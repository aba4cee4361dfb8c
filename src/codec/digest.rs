//! Chunk digests (formats/blob.md §2).

use sha2::Digest as _;

/// The chunk digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Digester {
    /// BLAKE3 (default).
    #[default]
    Blake3,
    /// SHA-256.
    Sha256,
}

impl Digester {
    /// Digest of `data`.
    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            Digester::Blake3 => *blake3::hash(data).as_bytes(),
            Digester::Sha256 => sha2::Sha256::digest(data).into(),
        }
    }

    /// Algorithm code in blob tables (formats/blob.md §8).
    pub fn code(self) -> u32 {
        match self {
            Digester::Blake3 => 0,
            Digester::Sha256 => 1,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Digester::Blake3 => "blake3",
            Digester::Sha256 => "sha256",
        }
    }
}

impl std::str::FromStr for Digester {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "blake3" => Ok(Digester::Blake3),
            "sha256" => Ok(Digester::Sha256),
            _ => Err(crate::Error::InvalidOption(format!(
                "unknown digester {s:?}"
            ))),
        }
    }
}

/// CRC-32C of a chunk's uncompressed bytes.
pub fn crc32(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_hello() {
        // value recorded by upstream for a 5-byte file "hello"
        assert_eq!(crc32(b"hello"), 0x9A71_BB4C);
    }
}
