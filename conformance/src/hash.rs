//! The sha256 digests reports and snapshots name files by.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// The sha256 of a single weight file, or of the `sha256sum` listing of several.
pub fn weights_sha256(files: &[PathBuf]) -> std::io::Result<String> {
    let digests = files
        .iter()
        .map(|path| {
            let mut hasher = Sha256::new();
            std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            Ok((hex(&hasher.finalize()), name.into_owned()))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(match digests.as_slice() {
        [(digest, _)] => digest.clone(),
        _ => {
            let listing: String = digests.iter().map(|(d, n)| format!("{d}  {n}\n")).collect();
            hex(&Sha256::digest(listing.as_bytes()))
        }
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
