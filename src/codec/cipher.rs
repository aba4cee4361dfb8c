//! Chunk encryption as upstream's `--encrypt` does it (formats/blob.md §10): AES-128-XTS, one
//! random key and tweak per blob, every piece (a stored chunk or batch, the chunk-info array,
//! the blob-meta header) encrypted on its own from its start, pieces under one AES block padded
//! to 18 bytes. The cipher is RustCrypto's (`aes` + `xts-mode`); nothing here is hand-written
//! cryptography beyond the padding rule.

use aes::cipher::KeyInit;
use aes::Aes128;
use xts_mode::{Array, Xts128};

/// Bytes of an AES-128-XTS key pair (data key, then tweak key).
pub const KEY_SIZE: usize = 32;
/// Bytes of the XTS tweak ("IV").
pub const IV_SIZE: usize = 16;
/// Pieces shorter than one AES block are padded to this many bytes (formats/blob.md §10).
const PADDED_SIZE: usize = 18;
const BLOCK: usize = 16;
/// The two bytes that end a padded piece.
const PADDING_END: [u8; 2] = [0x78, 0x90];

/// The key and tweak of one encrypted blob, as the bootstrap's blob table stores them in the
/// clear (formats/rafs-v6.md §5, formats/blob.md §10).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BlobKey {
    /// AES-128-XTS key pair: the data key, then the tweak key; the halves differ.
    pub key: [u8; KEY_SIZE],
    /// The XTS tweak used for every piece of the blob.
    pub iv: [u8; IV_SIZE],
}

impl std::fmt::Debug for BlobKey {
    // keys stay out of logs and error messages
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobKey(..)")
    }
}

/// Why a piece could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// XTS needs at least one whole block.
    #[error("{0} encrypted bytes, fewer than one AES block")]
    TooShort(usize),
    /// The plaintext ends like a padded piece but its padding value is impossible.
    #[error("invalid padding value {0}")]
    BadPadding(u8),
    /// The key pair has equal halves, which XTS forbids.
    #[error("the two halves of the key are equal")]
    WeakKey,
}

impl BlobKey {
    /// A fresh key and tweak from the operating system's secure random source. Equal key
    /// halves (which XTS forbids) are replaced the way upstream replaces them.
    pub fn generate() -> std::io::Result<BlobKey> {
        let mut key = [0u8; KEY_SIZE];
        let mut iv = [0u8; IV_SIZE];
        getrandom::fill(&mut key).map_err(std::io::Error::other)?;
        getrandom::fill(&mut iv).map_err(std::io::Error::other)?;
        let (lo, hi) = key.split_at_mut(KEY_SIZE / 2);
        if lo == hi {
            let fill = if hi[0] == 0xa5 { 0x5a } else { 0xa5 };
            lo.fill(fill);
        }
        Ok(BlobKey { key, iv })
    }

    fn xts(&self) -> Result<Xts128<Aes128>, CipherError> {
        let (lo, hi) = self.key.split_at(KEY_SIZE / 2);
        if lo == hi {
            return Err(CipherError::WeakKey);
        }
        let data = Aes128::new_from_slice(lo).map_err(|_| CipherError::WeakKey)?;
        let tweak = Aes128::new_from_slice(hi).map_err(|_| CipherError::WeakKey)?;
        Ok(Xts128::new(data, tweak))
    }

    /// Encrypts one piece: the ciphertext is as long as the input, or 18 bytes for an input
    /// shorter than one block (formats/blob.md §10).
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, CipherError> {
        let mut buf = if plain.len() >= BLOCK {
            plain.to_vec()
        } else {
            let mut padded = vec![(BLOCK - plain.len()) as u8; PADDED_SIZE];
            padded[..plain.len()].copy_from_slice(plain);
            padded[BLOCK..].copy_from_slice(&PADDING_END);
            padded
        };
        self.xts()?.encrypt_sector(&mut buf, Array(self.iv));
        Ok(buf)
    }

    /// Decrypts one piece, removing the short-piece padding.
    pub fn decrypt(&self, stored: &[u8]) -> Result<Vec<u8>, CipherError> {
        if stored.len() < BLOCK {
            return Err(CipherError::TooShort(stored.len()));
        }
        let mut buf = stored.to_vec();
        self.xts()?.decrypt_sector(&mut buf, Array(self.iv));
        if buf.len() == PADDED_SIZE && buf[BLOCK..] == PADDING_END {
            let pad = buf[BLOCK - 1];
            if usize::from(pad) >= BLOCK || pad == 0 {
                return Err(CipherError::BadPadding(pad));
            }
            buf.truncate(BLOCK - usize::from(pad));
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BlobKey {
        let mut key = [0u8; KEY_SIZE];
        key.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        BlobKey { key, iv: [7; 16] }
    }

    #[test]
    fn pieces_of_every_length_round_trip() {
        let k = key();
        for len in [1, 6, 15, 16, 17, 31, 32, 33, 4096, 5000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let enc = k.encrypt(&plain).unwrap();
            let want = if len < BLOCK { PADDED_SIZE } else { len };
            assert_eq!(enc.len(), want, "len {len}");
            assert_ne!(enc[..BLOCK.min(len)], plain[..BLOCK.min(len)]);
            assert_eq!(k.decrypt(&enc).unwrap(), plain, "len {len}");
        }
    }

    /// IEEE P1619 test vector 4 (the first 32 bytes), as OpenSSL's aes-128-xts computes it:
    /// upstream encrypts with OpenSSL, so the same key and tweak must give the same bytes.
    #[test]
    fn matches_the_ieee_1619_vector() {
        let mut key = [0u8; KEY_SIZE];
        key[..16].copy_from_slice(&hex::decode("27182818284590452353602874713526").unwrap());
        key[16..].copy_from_slice(&hex::decode("31415926535897932384626433832795").unwrap());
        let k = BlobKey { key, iv: [0; 16] };
        let plain: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        let enc = k.encrypt(&plain).unwrap();
        assert_eq!(
            hex::encode(&enc[..32]),
            "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c"
        );
    }

    #[test]
    fn equal_key_halves_are_refused_and_never_generated() {
        let k = BlobKey {
            key: [3; KEY_SIZE],
            iv: [0; 16],
        };
        assert_eq!(k.encrypt(b"x"), Err(CipherError::WeakKey));
        let g = BlobKey::generate().unwrap();
        assert_ne!(g.key[..16], g.key[16..]);
    }

    #[test]
    fn short_or_badly_padded_input_is_an_error_not_garbage() {
        let k = key();
        assert_eq!(k.decrypt(&[0; 15]), Err(CipherError::TooShort(15)));
        // a padded piece whose padding byte says 16: impossible
        let mut padded = vec![16u8; PADDED_SIZE];
        padded[BLOCK..].copy_from_slice(&PADDING_END);
        let mut enc = padded.clone();
        k.xts().unwrap().encrypt_sector(&mut enc, Array(k.iv));
        assert_eq!(k.decrypt(&enc), Err(CipherError::BadPadding(16)));
    }
}
