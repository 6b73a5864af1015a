//! GGUF files: the header, the metadata and the tensor table, parsed with every count, offset and
//! size checked against the file (a GGUF file is untrusted input).
//!
//! The parser works on a byte slice ([`Gguf::parse`]); [`GgufFile`] reads a file and keeps its
//! bytes so tensors can be borrowed as the raw (still quantized) bytes the file holds. Nothing is
//! allocated from a declared count before the bytes that count promises are known to be there:
//! an array of `n` items needs at least `n` times its item's smallest encoding in the rest of the
//! file, a string its whole length. Versions 2 and 3 are read (little-endian); version 1 (32-bit
//! counts) and big-endian files are refused.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Why a GGUF file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufError {
    /// The file ended inside `what`, which started at byte `offset`.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it started.
        offset: u64,
    },
    /// The file does not start with `GGUF`.
    BadMagic([u8; 4]),
    /// A version other than 2 or 3 (a big-endian file reads as a huge version).
    UnsupportedVersion(u32),
    /// A metadata value type id that GGUF does not define.
    BadValueType {
        /// The key whose value it is.
        key: String,
        /// The type id found.
        ty: u32,
    },
    /// An array of arrays (llama.cpp refuses them too).
    NestedArray {
        /// The key whose value it is.
        key: String,
    },
    /// A declared count that the rest of the file cannot hold.
    CountTooLarge {
        /// What was counted.
        what: &'static str,
        /// The count declared.
        count: u64,
    },
    /// A string that is not UTF-8.
    InvalidUtf8 {
        /// Where the string's bytes start.
        offset: u64,
    },
    /// The same metadata key twice.
    DuplicateKey(String),
    /// The same tensor name twice.
    DuplicateTensor(String),
    /// `general.alignment` that is not a non-zero power of two held as a u32.
    BadAlignment,
    /// A tensor whose shape is unusable: too many dimensions, a zero dimension, an element count
    /// that overflows, or rows that are not whole blocks of its type.
    BadShape {
        /// The tensor.
        name: String,
        /// Its dimensions, innermost first (ggml's order).
        dims: Vec<u64>,
    },
    /// A tensor type id that ggml does not define.
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The type id found.
        ty: u32,
    },
    /// A tensor whose data is not aligned or lies (partly) outside the file.
    TensorOutOfBounds {
        /// The tensor.
        name: String,
    },
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, offset } => write!(f, "file ends inside {what} (at byte {offset})"),
            Self::BadMagic(m) => write!(f, "not a GGUF file (starts with {m:02x?})"),
            Self::UnsupportedVersion(v) => write!(f, "GGUF version {v} is not supported (2 and 3 are)"),
            Self::BadValueType { key, ty } => write!(f, "metadata {key:?} has unknown value type {ty}"),
            Self::NestedArray { key } => write!(f, "metadata {key:?} is an array of arrays"),
            Self::CountTooLarge { what, count } => {
                write!(f, "{what} count {count} is more than the file can hold")
            }
            Self::InvalidUtf8 { offset } => write!(f, "string at byte {offset} is not UTF-8"),
            Self::DuplicateKey(k) => write!(f, "metadata key {k:?} appears twice"),
            Self::DuplicateTensor(n) => write!(f, "tensor {n:?} appears twice"),
            Self::BadAlignment => write!(f, "general.alignment is not a power of two (u32)"),
            Self::BadShape { name, dims } => write!(f, "tensor {name:?} has unusable shape {dims:?}"),
            Self::UnknownTensorType { name, ty } => write!(f, "tensor {name:?} has unknown type id {ty}"),
            Self::TensorOutOfBounds { name } => {
                write!(f, "tensor {name:?} is misaligned or lies outside the file")
            }
        }
    }
}

impl std::error::Error for GgufError {}

/// ggml tensor types: every id the format defines, so sizes can be checked for all of them.
/// Which ones can be dequantized is [`GgmlType::is_supported`].
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// The type with ggml id `id`, if ggml defines it.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 | IQ4_NL => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 40),
            MXFP4 => (32, 17),
            Q2_K => (256, 84),
            Q3_K | IQ3_S => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS | TQ2_0 => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            IQ1_M => (256, 56),
            TQ1_0 => (256, 54),
        }
    }

    /// Whether [`crate::quant`] dequantizes this type (and computes dot products with it).
    pub fn is_supported(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q8_0 | Q4_K | Q6_K)
    }

    /// Bytes that `n` elements take, if `n` is whole blocks (and the size fits a u64).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (elems, bytes) = self.block();
        if !n.is_multiple_of(elems as u64) {
            return None;
        }
        (n / elems as u64).checked_mul(bytes as u64)
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f32
    F32(f32),
    /// f64
    F64(f64),
    /// bool (one byte, 0 or 1)
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of scalars or strings (all of one type).
    Array(Array),
}

/// A metadata array, stored by item type (no per-item enum overhead).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
}

impl Array {
    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
        }
    }

    /// Whether it has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items as i64 when they are integers of any width (and fit).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        Some(match self {
            Self::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Self::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Self::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Self::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Self::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Self::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Self::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?,
            Self::I64(v) => v.clone(),
            _ => return None,
        })
    }

    /// The items as f32 when they are floats (f64 narrowed).
    pub fn to_f32s(&self) -> Option<Vec<f32>> {
        match self {
            Self::F32(v) => Some(v.clone()),
            Self::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => None,
        }
    }
}

impl Value {
    /// The GGUF name of the value's type (for error messages).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F32(_) => "f32",
            Self::F64(_) => "f64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }

    /// An integer value of any width as u64 (negative values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(x) => Some(x.into()),
            Self::U16(x) => Some(x.into()),
            Self::U32(x) => Some(x.into()),
            Self::U64(x) => Some(x),
            Self::I8(x) => u64::try_from(x).ok(),
            Self::I16(x) => u64::try_from(x).ok(),
            Self::I32(x) => u64::try_from(x).ok(),
            Self::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// A float value (f32 or f64) as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(x) => Some(x.into()),
            Self::F64(x) => Some(x),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions innermost first, as ggml and the file give them: a matrix of `rows` rows of
    /// `cols` elements is `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset of its data from the start of the file.
    pub offset: u64,
    /// Byte length of its data.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header, metadata and tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data.
    pub alignment: u64,
    /// Byte offset where tensor data starts.
    pub data_offset: u64,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let bytes = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated { what, offset: self.pos as u64 });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.take::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.take::<8>(what).map(u64::from_le_bytes)
    }

    /// A count of items of at least `min_size` bytes each that the rest of the file must hold.
    fn count(&mut self, what: &'static str, min_size: usize) -> Result<usize, GgufError> {
        let count = self.u64(what)?;
        let fits = (self.remaining() / min_size.max(1)) as u64;
        if count > fits {
            return Err(GgufError::CountTooLarge { what, count });
        }
        // count <= remaining bytes, so it fits a usize.
        Ok(count as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.count(what, 1)?;
        let start = self.pos as u64;
        let bytes = self.bytes(len, what)?;
        core::str::from_utf8(bytes).map(str::to_owned).map_err(|_| GgufError::InvalidUtf8 { offset: start })
    }

    fn array<T, const N: usize>(&mut self, n: usize, f: impl Fn([u8; N]) -> T) -> Result<Vec<T>, GgufError> {
        let bytes = self.bytes(n * N, "array items")?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }

    fn value(&mut self, key: &str, ty: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            T_U8 => Value::U8(self.take::<1>("u8")?[0]),
            T_I8 => Value::I8(self.take::<1>("i8")?[0] as i8),
            T_U16 => Value::U16(u16::from_le_bytes(self.take("u16")?)),
            T_I16 => Value::I16(i16::from_le_bytes(self.take("i16")?)),
            T_U32 => Value::U32(self.u32("u32")?),
            T_I32 => Value::I32(i32::from_le_bytes(self.take("i32")?)),
            T_U64 => Value::U64(self.u64("u64")?),
            T_I64 => Value::I64(i64::from_le_bytes(self.take("i64")?)),
            T_F32 => Value::F32(f32::from_le_bytes(self.take("f32")?)),
            T_F64 => Value::F64(f64::from_le_bytes(self.take("f64")?)),
            T_BOOL => Value::Bool(self.take::<1>("bool")?[0] != 0),
            T_STRING => Value::String(self.string("string")?),
            T_ARRAY => {
                let item_ty = self.u32("array type")?;
                let min = match item_ty {
                    T_U8 | T_I8 | T_BOOL => 1,
                    T_U16 | T_I16 => 2,
                    T_U32 | T_I32 | T_F32 => 4,
                    T_U64 | T_I64 | T_F64 | T_STRING => 8,
                    T_ARRAY => return Err(GgufError::NestedArray { key: key.to_owned() }),
                    ty => return Err(GgufError::BadValueType { key: key.to_owned(), ty }),
                };
                let n = self.count("array", min)?;
                Value::Array(match item_ty {
                    T_U8 => Array::U8(self.array(n, |[b]: [u8; 1]| b)?),
                    T_I8 => Array::I8(self.array(n, |[b]: [u8; 1]| b as i8)?),
                    T_BOOL => Array::Bool(self.array(n, |[b]: [u8; 1]| b != 0)?),
                    T_U16 => Array::U16(self.array(n, u16::from_le_bytes)?),
                    T_I16 => Array::I16(self.array(n, i16::from_le_bytes)?),
                    T_U32 => Array::U32(self.array(n, u32::from_le_bytes)?),
                    T_I32 => Array::I32(self.array(n, i32::from_le_bytes)?),
                    T_F32 => Array::F32(self.array(n, f32::from_le_bytes)?),
                    T_U64 => Array::U64(self.array(n, u64::from_le_bytes)?),
                    T_I64 => Array::I64(self.array(n, i64::from_le_bytes)?),
                    T_F64 => Array::F64(self.array(n, f64::from_le_bytes)?),
                    _ => {
                        let mut v = Vec::with_capacity(n);
                        for _ in 0..n {
                            v.push(self.string("array string")?);
                        }
                        Array::String(v)
                    }
                })
            }
            ty => return Err(GgufError::BadValueType { key: key.to_owned(), ty }),
        })
    }
}

impl Gguf {
    /// Parses the header, metadata and tensor table of a whole GGUF file held in `file`, and
    /// checks that every tensor's data lies inside `file`, aligned.
    pub fn parse(file: &[u8]) -> Result<Self, GgufError> {
        let mut r = Reader { buf: file, pos: 0 };
        let magic = r.take::<4>("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        // A tensor entry takes at least 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes; a
        // metadata entry 8 (key) + 4 (type) + 1.
        let raw_tensors = r.u64("tensor count")?;
        let n_kv = r.count("metadata", 13)?;
        if raw_tensors > (r.remaining() / 24) as u64 {
            return Err(GgufError::CountTooLarge { what: "tensor", count: raw_tensors });
        }
        let n_tensors = raw_tensors as usize;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32("value type")?;
            let value = r.value(&key, ty)?;
            if metadata.contains_key(&key) {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some(_) => return Err(GgufError::BadAlignment),
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")? as usize;
            if n_dims > MAX_DIMS {
                return Err(GgufError::BadShape { name, dims: Vec::new() });
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let ty_id = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            let Some(ty) = GgmlType::from_id(ty_id) else {
                return Err(GgufError::UnknownTensorType { name, ty: ty_id });
            };
            let (block, _) = ty.block();
            let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let size = match (n, dims.first()) {
                (Some(n), Some(&d0)) if !dims.contains(&0) && d0 % block as u64 == 0 => ty.bytes_for(n),
                _ => None,
            };
            let Some(size) = size else {
                return Err(GgufError::BadShape { name, dims });
            };
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }

        let data_offset = (r.pos as u64).next_multiple_of(alignment);
        let len = file.len() as u64;
        for t in &mut tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(start), Some(end)) if t.offset % alignment == 0 && end <= len => {
                    t.offset = start;
                }
                _ => return Err(GgufError::TensorOutOfBounds { name: t.name.clone() }),
            }
        }
        Ok(Self { version, metadata, tensors, alignment, data_offset })
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Why a GGUF file could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Reading the file failed.
    Io(std::io::Error),
    /// The file is not a GGUF file this parser accepts.
    Gguf(GgufError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "reading the file: {e}"),
            Self::Gguf(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Gguf(e) => Some(e),
        }
    }
}

/// A GGUF file read into memory with its parsed table; tensors are borrowed as raw bytes.
#[derive(Debug, Clone)]
pub struct GgufFile {
    bytes: Vec<u8>,
    /// The parsed header, metadata and tensor table.
    pub gguf: Gguf,
}

impl GgufFile {
    /// Reads and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let bytes = std::fs::read(path).map_err(OpenError::Io)?;
        Self::from_bytes(bytes).map_err(OpenError::Gguf)
    }

    /// Parses a whole file already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let gguf = Gguf::parse(&bytes)?;
        Ok(Self { bytes, gguf })
    }

    /// The raw bytes of a tensor of this file (as stored: quantized types stay quantized).
    pub fn tensor_data(&self, t: &TensorInfo) -> Option<&[u8]> {
        let start = usize::try_from(t.offset).ok()?;
        let end = start.checked_add(usize::try_from(t.size).ok()?)?;
        self.bytes.get(start..end)
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl GgmlType {
    /// ggml's id of the type (what the tensor table stores).
    pub fn id(self) -> u32 {
        (0..=u8::MAX as u32).find(|&i| Self::from_id(i) == Some(self)).unwrap_or(u32::MAX)
    }
}

/// Writes GGUF files (version 3): for tests, fuzz seeds and synthetic models.
#[derive(Debug, Clone, Default)]
pub struct GgufBuilder {
    kv: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => T_U8,
        Value::I8(_) => T_I8,
        Value::U16(_) => T_U16,
        Value::I16(_) => T_I16,
        Value::U32(_) => T_U32,
        Value::I32(_) => T_I32,
        Value::U64(_) => T_U64,
        Value::I64(_) => T_I64,
        Value::F32(_) => T_F32,
        Value::F64(_) => T_F64,
        Value::Bool(_) => T_BOOL,
        Value::String(_) => T_STRING,
        Value::Array(_) => T_ARRAY,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => {
            macro_rules! arr {
                ($ty:expr, $v:expr, $f:expr) => {{
                    out.extend_from_slice(&$ty.to_le_bytes());
                    out.extend_from_slice(&($v.len() as u64).to_le_bytes());
                    for x in $v {
                        $f(&mut *out, x);
                    }
                }};
            }
            match a {
                Array::U8(v) => arr!(T_U8, v, |o: &mut Vec<u8>, x: &u8| o.push(*x)),
                Array::I8(v) => arr!(T_I8, v, |o: &mut Vec<u8>, x: &i8| o.push(*x as u8)),
                Array::Bool(v) => arr!(T_BOOL, v, |o: &mut Vec<u8>, x: &bool| o.push(u8::from(*x))),
                Array::U16(v) => {
                    arr!(T_U16, v, |o: &mut Vec<u8>, x: &u16| o.extend_from_slice(&x.to_le_bytes()))
                }
                Array::I16(v) => {
                    arr!(T_I16, v, |o: &mut Vec<u8>, x: &i16| o.extend_from_slice(&x.to_le_bytes()))
                }
                Array::U32(v) => {
                    arr!(T_U32, v, |o: &mut Vec<u8>, x: &u32| o.extend_from_slice(&x.to_le_bytes()))
                }
                Array::I32(v) => {
                    arr!(T_I32, v, |o: &mut Vec<u8>, x: &i32| o.extend_from_slice(&x.to_le_bytes()))
                }
                Array::U64(v) => {
                    arr!(T_U64, v, |o: &mut Vec<u8>, x: &u64| o.extend_from_slice(&x.to_le_bytes()))
                }
                Array::I64(v) => {
                    arr!(T_I64, v, |o: &mut Vec<u8>, x: &i64| o.extend_from_slice(&x.to_le_bytes()))
                }
                Array::F32(v) => {
                    arr!(T_F32, v, |o: &mut Vec<u8>, x: &f32| o.extend_from_slice(&x.to_le_bytes()))
                }
                Array::F64(v) => {
                    arr!(T_F64, v, |o: &mut Vec<u8>, x: &f64| o.extend_from_slice(&x.to_le_bytes()))
                }
                Array::String(v) => arr!(T_STRING, v, |o: &mut Vec<u8>, x: &String| put_str(o, x)),
            }
        }
    }
}

impl GgufBuilder {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry (in order; a repeated key is written twice).
    pub fn kv(mut self, key: &str, value: Value) -> Self {
        self.kv.push((key.to_owned(), value));
        self
    }

    /// Adds a tensor with its raw bytes (not checked against its shape and type).
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.tensors.push((name.to_owned(), dims.to_vec(), ty, data));
        self
    }

    /// The file's bytes: tensor data aligned to `general.alignment` when it is a u32, else 32.
    pub fn build(&self) -> Vec<u8> {
        let align = self
            .kv
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("general.alignment", Value::U32(a)) if *a > 0 => Some(u64::from(*a)),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + data.len() as u64).next_multiple_of(align);
        }
        // Padding between tensors' data, none after the last (a file without tensors ends with its
        // metadata).
        for (_, _, _, data) in &self.tensors {
            out.resize((out.len() as u64).next_multiple_of(align) as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}
