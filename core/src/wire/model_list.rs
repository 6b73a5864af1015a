//! MODEL_LIST: the models a node serves, one entry per request, by index.
//!
//! Request: `index u16`. Answer ([`ModelListed`]): `count u16` (the models the node serves
//! now), `kind u8` ([`ModelKind`]), then `name` as `str8`: the model at `index` in name order,
//! or kind [`ModelKind::NONE`] and an empty name when `index >= count`. One entry per frame
//! keeps every answer small and the core free of allocation; a client asks for 0, 1, … until
//! `count` (a listing can change between two requests if the node's model folder does).
//!
//! See `docs/PROTOCOL.md` §4 MODEL_LIST for the byte layout.

use core::fmt;

use super::msg::{MAX_MODEL_NAME, Message, valid_model_name};
use super::{DecodeError, EncodeError, Kind, Reader, Writer};

/// What a listed model does: an open enum, so values a later node adds survive a decode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKind(pub u8);

impl ModelKind {
    /// No model: the index was past the end of the list.
    pub const NONE: Self = Self(0);
    /// A sentence-embedding model (MODEL_LOAD, then INFER).
    pub const EMBEDDING: Self = Self(1);
    /// A language model (MODEL_LOAD, then GENERATE).
    pub const GENERATION: Self = Self(2);

    /// The spec name of a known kind.
    pub const fn name(self) -> Option<&'static str> {
        match self {
            Self::NONE => Some("none"),
            Self::EMBEDDING => Some("embedding"),
            Self::GENERATION => Some("generation"),
            _ => None,
        }
    }
}

impl fmt::Debug for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Unknown({})", self.0),
        }
    }
}

/// MODEL_LIST: asks for the entry at `index` of the node's model list. Payload: `index u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelList {
    /// Position in the list, from 0.
    pub index: u16,
}

impl<'a> Message<'a> for ModelList {
    const KIND: Kind = Kind::MODEL_LIST;
    const RESPONSE: bool = false;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let index = r.u16()?;
        r.finish()?;
        Ok(Self { index })
    }

    fn buffer_len(&self) -> usize {
        2
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u16(self.index)?;
        Ok(w.len())
    }
}

/// The answer to MODEL_LIST: how many models the node serves, and the one asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelListed<'a> {
    /// Models the node serves now.
    pub count: u16,
    /// What the model at the index does ([`ModelKind::NONE`] past the end).
    pub kind: ModelKind,
    /// Its name, as MODEL_LOAD takes it (empty past the end).
    pub name: &'a str,
}

impl<'a> Message<'a> for ModelListed<'a> {
    const KIND: Kind = Kind::MODEL_LIST;
    const RESPONSE: bool = true;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let count = r.u16()?;
        let kind = ModelKind(r.u8()?);
        let name = r.str_u8(MAX_MODEL_NAME, "model_listed.name")?;
        r.finish()?;
        // An entry names a loadable model; past the end there is neither name nor kind.
        let none = kind == ModelKind::NONE;
        if none != name.is_empty() || !(none || valid_model_name(name)) {
            return Err(DecodeError::InvalidField("model_listed.name"));
        }
        Ok(Self { count, kind, name })
    }

    fn buffer_len(&self) -> usize {
        2 + 1 + 1 + self.name.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u16(self.count)?;
        w.u8(self.kind.0)?;
        w.str_u8(self.name, MAX_MODEL_NAME)?;
        Ok(w.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_ones_are_refused() {
        let mut buf = [0u8; 80];
        let m = ModelListed { count: 2, kind: ModelKind::GENERATION, name: "SmolLM2-135M-Instruct.Q4_1" };
        let n = m.emit(&mut buf).expect("fits");
        assert_eq!(n, m.buffer_len());
        assert_eq!(ModelListed::parse(&buf[..n]), Ok(m));
        let end = ModelListed { count: 2, kind: ModelKind::NONE, name: "" };
        let n = end.emit(&mut buf).expect("fits");
        assert_eq!(&buf[..n], &[2, 0, 0, 0]);
        assert_eq!(ModelListed::parse(&buf[..n]), Ok(end));
        // A kind without a name, a name without a kind, a name MODEL_LOAD would refuse.
        for bad in [&[1u8, 0, 1, 0][..], &[1, 0, 0, 1, b'a'], &[1, 0, 1, 2, b'.', b'a'], &[1, 0, 1]] {
            assert!(ModelListed::parse(bad).is_err(), "{bad:?}");
        }
        // Unknown kinds survive.
        let later = ModelListed { count: 1, kind: ModelKind(9), name: "m" };
        let n = later.emit(&mut buf).expect("fits");
        assert_eq!(ModelListed::parse(&buf[..n]), Ok(later));
        assert_eq!(ModelList::parse(&[3, 1]), Ok(ModelList { index: 0x103 }));
        assert!(ModelList::parse(&[3]).is_err() && ModelList::parse(&[3, 1, 0]).is_err());
    }
}
