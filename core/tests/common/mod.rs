//! Test helpers: a small Vec-backed backend and a client-side frame builder.
#![allow(dead_code, unreachable_pub, missing_docs)]

use rela_core::backend::{
    BackendError, BackendKind, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage, check_copy_overlap,
    check_range,
};
use rela_core::crc32::SoftCrc32;
use rela_core::session::{Session, SessionConfig};
use rela_core::time::Instant;
use rela_core::wire::msg::{Message, Response};
use rela_core::wire::{Flags, Frame, Kind, encode_frame};
use std::collections::BTreeMap;

/// A simple, obviously-correct backend for state-machine tests.
#[derive(Debug, Default)]
pub struct MockBackend {
    pub total: u64,
    pub bufs: BTreeMap<u64, Vec<u8>>,
    pub next: u64,
    pub freed: Vec<(u64, bool)>,
    pub dispatched: Vec<KernelCall>,
}

impl MockBackend {
    pub fn new(total: u64) -> Self {
        Self { total, next: 1000, ..Default::default() }
    }
    fn buf(&mut self, id: BufferId) -> Result<&mut Vec<u8>, BackendError> {
        self.bufs.get_mut(&id.0).ok_or(BackendError::NoSuchBuffer)
    }
}

impl GpuBackend for MockBackend {
    fn info(&self) -> DeviceInfo {
        DeviceInfo::new(BackendKind::HOST, "mock", "tests", self.total, self.total)
    }
    fn usage(&self) -> Usage {
        Usage { used: self.bufs.values().map(|b| b.len() as u64).sum(), buffers: self.bufs.len() as u32 }
    }
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        if size == 0 {
            return Err(BackendError::InvalidArgument);
        }
        if self.usage().used + size > self.total {
            return Err(BackendError::OutOfMemory);
        }
        self.next += 1;
        self.bufs.insert(self.next, vec![0; size as usize]);
        Ok(BufferId(self.next))
    }
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        let mut b = self.bufs.remove(&id.0).ok_or(BackendError::NoSuchBuffer)?;
        b.fill(0);
        self.freed.push((id.0, b.iter().all(|x| *x == 0)));
        Ok(())
    }
    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.bufs.get(&id.0).map(|b| b.len() as u64).ok_or(BackendError::NoSuchBuffer)
    }
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let b = self.buf(id)?;
        let r = check_range(b.len() as u64, offset, data.len() as u64)?;
        b[r.start as usize..r.end as usize].copy_from_slice(data);
        Ok(())
    }
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let b = self.buf(id)?;
        let r = check_range(b.len() as u64, offset, out.len() as u64)?;
        out.copy_from_slice(&b[r.start as usize..r.end as usize]);
        Ok(())
    }
    fn copy(
        &mut self,
        src: BufferId,
        so: u64,
        dst: BufferId,
        d_o: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        let sr = check_range(self.size(src)?, so, len)?;
        let dr = check_range(self.size(dst)?, d_o, len)?;
        check_copy_overlap(src, &sr, dst, &dr)?;
        let data = self.buf(src)?[sr.start as usize..sr.end as usize].to_vec();
        self.buf(dst)?[dr.start as usize..dr.end as usize].copy_from_slice(&data);
        Ok(())
    }
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        let b = self.buf(id)?;
        let r = check_range(b.len() as u64, offset, len)?;
        b[r.start as usize..r.end as usize].fill(value);
        Ok(())
    }
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        call.validate(|id| self.size(id).ok())?;
        self.dispatched.push(*call);
        Ok(())
    }
}

/// An owned copy of a response frame.
#[derive(Debug, Clone)]
pub struct Out {
    pub kind: Kind,
    pub flags: Flags,
    pub seq: u16,
    pub payload: Vec<u8>,
}

impl Out {
    pub fn response(&self) -> Response<'_> {
        Response::parse(self.kind, self.flags, &self.payload).expect("server responses decode")
    }
    pub fn error_code(&self) -> Option<u16> {
        match self.response() {
            Response::Error(e) => Some(e.code.0),
            _ => None,
        }
    }
}

/// Drives a session the way a host would.
pub struct Driver {
    pub session: Session,
    pub now: Instant,
    seq: u16,
    out: Vec<u8>,
}

impl Driver {
    pub fn new(config: SessionConfig, nonce: [u8; 32]) -> Self {
        // Sessions with other nonces get other handle seeds; a host draws the two apart.
        let seed = u32::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3]]) ^ 0x0bad_5eed;
        Self::with_handle_seed(config, nonce, seed)
    }

    pub fn with_handle_seed(config: SessionConfig, nonce: [u8; 32], handle_seed: u32) -> Self {
        Self {
            session: Session::new(config, nonce, handle_seed, Instant::ZERO),
            now: Instant::ZERO,
            seq: 0,
            out: vec![0; 17 << 20],
        }
    }

    /// Sends a raw frame through `handle_frame_with` and a model host.
    pub fn raw_with<M: rela_core::model::ModelHost<MockBackend>>(
        &mut self,
        b: &mut MockBackend,
        models: &mut M,
        kind: Kind,
        flags: Flags,
        payload: &[u8],
    ) -> Vec<Out> {
        self.seq = self.seq.wrapping_add(1);
        let mut buf = vec![0u8; payload.len() + 16];
        let bytes =
            encode_frame::<SoftCrc32>(&mut buf, kind, flags, self.seq, payload).expect("encode").to_vec();
        let frame = Frame::parse::<SoftCrc32>(&bytes, u32::MAX).expect("valid frame");
        self.session.handle_frame_with(self.now, frame, b, models).expect("host follows the call order");
        self.drain(b)
    }

    /// Sends a raw frame (kind, flags, payload) and returns every response frame.
    pub fn raw(&mut self, b: &mut MockBackend, kind: Kind, flags: Flags, payload: &[u8]) -> Vec<Out> {
        self.seq = self.seq.wrapping_add(1);
        let mut buf = vec![0u8; payload.len() + 16];
        let bytes =
            encode_frame::<SoftCrc32>(&mut buf, kind, flags, self.seq, payload).expect("encode").to_vec();
        let frame = Frame::parse::<SoftCrc32>(&bytes, u32::MAX).expect("valid frame");
        self.session.handle_frame(self.now, frame, b).expect("host follows the call order");
        self.drain(b)
    }

    pub fn send<'a, M: Message<'a>>(&mut self, b: &mut MockBackend, msg: &M) -> Vec<Out> {
        let mut payload = vec![0u8; msg.buffer_len()];
        let n = msg.emit(&mut payload).expect("emit");
        assert_eq!(n, msg.buffer_len());
        self.raw(b, M::KIND, M::flags(), &payload)
    }

    /// Sends and expects exactly one response, echoing the seq.
    pub fn one<'a, M: Message<'a>>(&mut self, b: &mut MockBackend, msg: &M) -> Out {
        let mut outs = self.send(b, msg);
        assert_eq!(outs.len(), 1, "{outs:?}");
        let o = outs.remove(0);
        assert_eq!(o.seq, self.seq, "response echoes the request seq");
        o
    }

    /// Sends an empty-payload request and expects one response.
    pub fn empty(&mut self, b: &mut MockBackend, kind: Kind) -> Out {
        let mut outs = self.raw(b, kind, Flags::NONE, &[]);
        assert_eq!(outs.len(), 1, "{outs:?}");
        outs.remove(0)
    }

    pub fn drain(&mut self, b: &mut MockBackend) -> Vec<Out> {
        let mut outs = Vec::new();
        while let Some(t) =
            self.session.poll_transmit::<SoftCrc32, _>(b, &mut self.out).expect("buffer large enough")
        {
            let f =
                Frame::parse::<SoftCrc32>(&self.out[..t.len], u32::MAX).expect("session emits valid frames");
            outs.push(Out {
                kind: f.kind(),
                flags: f.header.flags,
                seq: f.seq(),
                payload: f.payload.to_vec(),
            });
        }
        outs
    }

    pub fn last_seq(&self) -> u16 {
        self.seq
    }
}
