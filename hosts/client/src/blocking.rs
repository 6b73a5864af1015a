//! [`BlockingClient`]: the async client behind a private current-thread runtime.

use std::net::SocketAddr;
use std::time::Duration;

use rela_core::wire::msg;
use tokio::runtime::{Builder, Runtime};

use crate::client::{
    Client, ClientOptions, GenerateEvent, GenerateOutcome, GenerateRequest, Handle, Kernel, ListedModel,
    LoadProgress, Progress, RemoteDeviceInfo, RemoteModel,
};
use crate::error::ClientError;

/// A blocking client for plain std programs: the same calls as [`Client`], each driven to
/// completion on a runtime this value owns.
///
/// Do not use it from inside an async runtime (tokio refuses nested `block_on`); use [`Client`]
/// there. The deadlines of [`ClientOptions`] apply as they do to [`Client`].
#[derive(Debug)]
pub struct BlockingClient {
    rt: Runtime,
    inner: Client,
}

impl BlockingClient {
    /// Connects and handshakes; see [`Client::connect`].
    pub fn connect(addr: SocketAddr, token: Option<&[u8]>) -> Result<Self, ClientError> {
        Self::connect_with(addr, token, ClientOptions::default())
    }

    /// Connects with explicit options; see [`Client::connect_with`].
    pub fn connect_with(
        addr: SocketAddr,
        token: Option<&[u8]>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let rt = Builder::new_current_thread().enable_all().build()?;
        let inner = rt.block_on(Client::connect_with(addr, token, options))?;
        Ok(Self { rt, inner })
    }

    /// Connects to a `HOST:PORT` name; see [`Client::connect_host`]. Returns the client and the
    /// address used.
    pub fn connect_host(
        host: &str,
        token: Option<&[u8]>,
        options: ClientOptions,
    ) -> Result<(Self, SocketAddr), ClientError> {
        let rt = Builder::new_current_thread().enable_all().build()?;
        let (inner, addr) = rt.block_on(Client::connect_host(host, token, options))?;
        Ok((Self { rt, inner }, addr))
    }

    /// The node's WELCOME.
    pub const fn welcome(&self) -> &msg::Welcome {
        self.inner.welcome()
    }

    /// See [`Client::ping`].
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        self.rt.block_on(self.inner.ping())
    }

    /// See [`Client::device_info`].
    pub fn device_info(&mut self) -> Result<RemoteDeviceInfo, ClientError> {
        self.rt.block_on(self.inner.device_info())
    }

    /// See [`Client::stats`].
    pub fn stats(&mut self) -> Result<msg::Stats, ClientError> {
        self.rt.block_on(self.inner.stats())
    }

    /// See [`Client::alloc`].
    pub fn alloc(&mut self, size: u64) -> Result<Handle, ClientError> {
        self.rt.block_on(self.inner.alloc(size))
    }

    /// See [`Client::free`].
    pub fn free(&mut self, h: Handle) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.free(h))
    }

    /// See [`Client::write`].
    pub fn write(&mut self, h: Handle, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.write(h, offset, data))
    }

    /// See [`Client::write_with_progress`].
    pub fn write_with_progress(
        &mut self,
        h: Handle,
        offset: u64,
        data: &[u8],
        progress: Option<Progress<'_>>,
    ) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.write_with_progress(h, offset, data, progress))
    }

    /// See [`Client::read`].
    pub fn read(&mut self, h: Handle, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        self.rt.block_on(self.inner.read(h, offset, len))
    }

    /// See [`Client::read_into`].
    pub fn read_into(&mut self, h: Handle, offset: u64, out: &mut [u8]) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.read_into(h, offset, out))
    }

    /// See [`Client::read_into_with_progress`].
    pub fn read_into_with_progress(
        &mut self,
        h: Handle,
        offset: u64,
        out: &mut [u8],
        progress: Option<Progress<'_>>,
    ) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.read_into_with_progress(h, offset, out, progress))
    }

    /// See [`Client::copy`].
    pub fn copy(
        &mut self,
        src: Handle,
        src_offset: u64,
        dst: Handle,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.copy(src, src_offset, dst, dst_offset, len))
    }

    /// See [`Client::fill`].
    pub fn fill(&mut self, h: Handle, offset: u64, len: u64, value: u8) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.fill(h, offset, len, value))
    }

    /// See [`Client::dispatch`].
    pub fn dispatch(&mut self, kernel: Kernel) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.dispatch(kernel))
    }

    /// See [`Client::serves_models`].
    pub fn serves_models(&self) -> bool {
        self.inner.serves_models()
    }

    /// GENERATE: runs a generation to its end, calling `on_event` with each event as it
    /// arrives (see [`Client::generate`]). Returning [`ControlFlow::Break`](std::ops::ControlFlow)
    /// from `on_event` sends CANCEL; the events until the end still arrive.
    pub fn generate(
        &mut self,
        req: &GenerateRequest<'_>,
        mut on_event: impl FnMut(&GenerateEvent) -> std::ops::ControlFlow<()>,
    ) -> Result<GenerateOutcome, ClientError> {
        let inner = &mut self.inner;
        self.rt.block_on(async move {
            let mut stream = inner.generate(req).await?;
            let mut out = GenerateOutcome::default();
            while let Some(event) = stream.next().await? {
                if on_event(&event).is_break() {
                    stream.cancel().await?;
                }
                out.record(&event);
            }
            Ok(out)
        })
    }

    /// See [`Client::list_models`].
    pub fn list_models(&mut self) -> Result<Vec<ListedModel>, ClientError> {
        self.rt.block_on(self.inner.list_models())
    }

    /// See [`Client::model_load_with_progress`].
    pub fn model_load(
        &mut self,
        name: &str,
        progress: Option<LoadProgress<'_>>,
    ) -> Result<RemoteModel, ClientError> {
        self.rt.block_on(self.inner.model_load_with_progress(name, progress))
    }

    /// See [`Client::model_upload`].
    pub fn model_upload(
        &mut self,
        base: &str,
        weights: &[u8],
        progress: Option<LoadProgress<'_>>,
    ) -> Result<RemoteModel, ClientError> {
        self.rt.block_on(self.inner.model_upload(base, weights, progress))
    }

    /// See [`Client::model_unload`].
    pub fn model_unload(&mut self, model: RemoteModel) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.model_unload(model))
    }

    /// See [`Client::infer`].
    pub fn infer(&mut self, model: RemoteModel, texts: &[&str]) -> Result<Vec<Vec<f32>>, ClientError> {
        self.rt.block_on(self.inner.infer(model, texts))
    }

    /// See [`Client::close`].
    pub fn close(self) -> Result<(), ClientError> {
        let Self { rt, inner } = self;
        rt.block_on(inner.close())
    }
}
