//! The weight formats the kernels read: GGUF's blocks of 32 values, and f32 and f16.

use candle_core::quantized::GgmlDType;
use half::f16;

/// The block formats these products read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    /// `d` (f16), then 16 bytes of 4-bit values: element j in the low nibble of byte j, element
    /// j + 16 in its high one. Value `d (q - 8)`.
    Q4_0,
    /// `d`, `m` (f16), then the nibbles as Q4_0. Value `d q + m`.
    Q4_1,
    /// `d` (f16), then 32 signed bytes. Value `d q`.
    Q8_0,
}

impl BlockFormat {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The GGML type of these blocks.
    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// The f16 scales a block starts with: `d`, and Q4_1's `m`.
    pub const fn scales(self) -> usize {
        match self {
            Self::Q4_1 => 2,
            _ => 1,
        }
    }

    /// Bytes per block of 32 values.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// Rows per tile of a `PackedMatrix`.
pub const TILE_ROWS: usize = 16;

/// Values per k-quant (Q2_K to Q6_K) and Q8_K block.
pub const SUPER_BLOCK: usize = 256;

/// Sub-blocks of 32 values per Q4_K or Q5_K block, each with its own scale and min.
pub(crate) const SUBS: usize = 8;

/// The layout of one block of a Q4_K tile's 16 rows (`k_quants`): where each part starts, and
/// the block's bytes.
pub(crate) mod q4k_tile {
    use super::{SUBS, TILE_ROWS};

    pub const DMIN_AT: usize = 2 * TILE_ROWS;
    pub const SCALES_AT: usize = 4 * TILE_ROWS;
    pub const MINS_AT: usize = SCALES_AT + SUBS * TILE_ROWS;
    pub const NIBBLES_AT: usize = MINS_AT + SUBS * TILE_ROWS;
    pub const BLOCK_BYTES: usize = NIBBLES_AT + TILE_ROWS * 128;
}

/// The layout of one block of a Q2_K tile's 16 rows (`q2_k`): the same bytes as the file's 16
/// rows, rearranged.
pub(crate) mod q2k_tile {
    use super::TILE_ROWS;

    pub const DMIN_AT: usize = 2 * TILE_ROWS;
    /// The 16 sub-blocks' bytes (scale in the low nibble, min in the high one), 16 rows each.
    pub const SCALES_AT: usize = 4 * TILE_ROWS;
    /// Per chunk `c` of 128 values and run `g`, the 16 rows' bytes `32c + 4g..+4` of `qs`.
    pub const QS_AT: usize = SCALES_AT + 16 * TILE_ROWS;
    pub const BLOCK_BYTES: usize = QS_AT + 64 * TILE_ROWS;
}

/// The layout of one block of a Q3_K tile's 16 rows (`q3_k`): the file's bytes, rearranged,
/// but the 16 sub-blocks' 6-bit scales a byte each (`sc - 32`, signed) where the file packs
/// them in 12.
pub(crate) mod q3k_tile {
    use super::TILE_ROWS;

    pub const SCALES_AT: usize = 2 * TILE_ROWS;
    /// Per chunk `c` of 128 values and run `g`, the 16 rows' bytes `32c + 4g..+4` of `qs`.
    pub const QS_AT: usize = SCALES_AT + 16 * TILE_ROWS;
    /// Per run `g`, the 16 rows' bytes `4g..4g + 4` of `hmask`.
    pub const HIGH_AT: usize = QS_AT + 64 * TILE_ROWS;
    pub const BLOCK_BYTES: usize = HIGH_AT + 32 * TILE_ROWS;
}

/// The layout of one block of a Q5_K tile's 16 rows (`q5_k`): a Q4_K tile's block (the low
/// nibbles where Q4_K's are), then the high bits.
pub(crate) mod q5k_tile {
    use super::{q4k_tile, TILE_ROWS};

    /// Per run `g` of 4 values, the 16 rows' bytes `4g..4g + 4` of `qh`: bit `s` of each the
    /// fifth bit of a value of sub-block `s`.
    pub const HIGH_AT: usize = q4k_tile::BLOCK_BYTES;
    pub const BLOCK_BYTES: usize = HIGH_AT + 8 * 4 * TILE_ROWS;
}

/// The layout of one block of a Q6_K tile's 16 rows (`q6_k`): where each part starts, and the
/// block's bytes (16 times the file's 210).
pub(crate) mod q6k_tile {
    use super::TILE_ROWS;

    /// The 16 sub-blocks' scales, 16 rows each.
    pub const SCALES_AT: usize = 2 * TILE_ROWS;
    /// The low nibbles' runs: per half `h`, pair `p` and run `g`, the 16 rows' bytes
    /// `64h + 32p + 4g..+4` of `ql`.
    pub const LOW_AT: usize = SCALES_AT + 16 * TILE_ROWS;
    /// The high bits' runs: per half `h` and run `g`, the 16 rows' bytes `32h + 4g..+4` of `qh`.
    pub const HIGH_AT: usize = LOW_AT + 32 * 4 * TILE_ROWS;
    pub const BLOCK_BYTES: usize = HIGH_AT + 16 * 4 * TILE_ROWS;
}

/// The dense formats these products read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseFormat {
    F32,
    F16,
}

impl DenseFormat {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::F32 => Some(Self::F32),
            GgmlDType::F16 => Some(Self::F16),
            _ => None,
        }
    }

    /// Value `j` of a row of this format, as f32 (the kernels' scalar tails and the reference).
    pub(crate) fn value(self, row: &[u8], j: usize) -> f32 {
        match self {
            Self::F32 => {
                f32::from_le_bytes([row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3]])
            }
            Self::F16 => half(row, 2 * j),
        }
    }

    pub const fn value_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }
}

/// The f16 at byte `at` of `block` as f32.
pub(crate) fn half(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}
