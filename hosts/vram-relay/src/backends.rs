//! Opening backends by name, and the `auto` choice.

use rela_core::backend::GpuBackend;

/// A backend the node can run on, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BackendChoice {
    /// CUDA, then Vulkan, then wgpu, then host memory.
    Auto,
    /// NVIDIA CUDA (needs the driver; kernels through NVRTC).
    Cuda,
    /// Vulkan (vulkano).
    Vulkan,
    /// WebGPU (wgpu) on its best adapter.
    Wgpu,
    /// wgpu restricted to Vulkan.
    WgpuVulkan,
    /// wgpu restricted to OpenGL/GLES through EGL.
    WgpuGl,
    /// Host memory (the reference backend).
    Host,
}

impl BackendChoice {
    /// The name used in reports and by `RELA_REQUIRE_BACKENDS`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cuda => "cuda",
            Self::Vulkan => "vulkan",
            Self::Wgpu => "wgpu",
            Self::WgpuVulkan => "wgpu-vulkan",
            Self::WgpuGl => "wgpu-gl",
            Self::Host => "host",
        }
    }
}

/// Live buffers the host backend's table holds for the whole node (sessions' buffers plus the
/// ~100 tensors of each loaded model).
const HOST_BLOCKS: usize = 4096;

/// A backend boxed for the node's engine thread.
pub(crate) type Boxed = Box<dyn GpuBackend + Send>;

/// The host backend as a node serves it: over memory the node shares with its connection
/// tasks (WRITE and READ data go straight between the socket and the buffer), with a
/// node-wide table of [`HOST_BLOCKS`] buffers.
pub(crate) fn host_for_node(capacity: u64) -> Result<rela_node::NodeBackend, String> {
    rela_node::NodeBackend::host::<HOST_BLOCKS>(host_bytes(capacity)?)
        .map_err(|e| format!("cannot map {capacity} bytes of host memory: {e}"))
}

/// `capacity` as a host allocation size.
fn host_bytes(capacity: u64) -> Result<usize, String> {
    usize::try_from(capacity).map_err(|_| "capacity does not fit in memory".to_string())
}

/// Why the heap could not provide `capacity` bytes.
fn no_room(capacity: u64, e: &std::collections::TryReserveError) -> String {
    format!("cannot reserve {} of host memory: {e}", crate::util::human(capacity))
}

/// Opens one concrete backend lending `capacity` bytes on its default device. `Err` says why
/// it cannot run here.
pub(crate) fn open(choice: BackendChoice, capacity: u64, vk_validation: bool) -> Result<Boxed, String> {
    open_on(choice, capacity, vk_validation, None)
}

/// [`open`] on a chosen device: a name substring or an index (Vulkan devices, wgpu adapters,
/// CUDA ordinals; ignored by the host backend).
pub(crate) fn open_on(
    choice: BackendChoice,
    capacity: u64,
    vk_validation: bool,
    device: Option<&str>,
) -> Result<Boxed, String> {
    match choice {
        BackendChoice::Auto => open_auto(capacity, vk_validation).map(|(b, _)| b),
        BackendChoice::Host => {
            // A node-wide table: every session's buffers and every loaded model's tensors.
            rela_backend_host::HostMemory::<Box<[u8]>, HOST_BLOCKS>::try_with_blocks(host_bytes(capacity)?)
                .map(|b| Box::new(b) as Boxed)
                .map_err(|e| no_room(capacity, &e))
        }
        BackendChoice::Vulkan => {
            let mut cfg = rela_backend_vulkan::VulkanConfig::new(capacity);
            cfg.validation = vk_validation;
            if let Some(d) = device {
                cfg.device = match d.parse::<usize>() {
                    Ok(i) => rela_backend_vulkan::DeviceSelector::Index(i),
                    Err(_) => rela_backend_vulkan::DeviceSelector::Name(d.to_string()),
                };
            }
            rela_backend_vulkan::VulkanBackend::new(cfg).map(|b| Box::new(b) as Boxed).map_err(|e| {
                // A device that was asked for and not found: say which ones there are.
                match (device, rela_backend_vulkan::list_devices()) {
                    (Some(_), Ok(list)) if !list.is_empty() => {
                        let names: Vec<String> =
                            list.iter().map(|(i, name, kind)| format!("{i}: {name} ({kind})")).collect();
                        format!("{e}; available Vulkan devices: {}", names.join(", "))
                    }
                    _ => e.to_string(),
                }
            })
        }
        BackendChoice::Wgpu | BackendChoice::WgpuVulkan | BackendChoice::WgpuGl => {
            let api = match choice {
                BackendChoice::WgpuVulkan => rela_backend_wgpu::Api::Vulkan,
                BackendChoice::WgpuGl => rela_backend_wgpu::Api::Gl,
                _ => rela_backend_wgpu::Api::Auto,
            };
            let cfg = rela_backend_wgpu::WgpuConfig {
                capacity,
                backends: api,
                adapter: device.map(str::to_string),
            };
            rela_backend_wgpu::WgpuBackend::new(cfg).map(|b| Box::new(b) as Boxed).map_err(|e| e.to_string())
        }
        BackendChoice::Cuda => {
            let mut cfg = rela_backend_cuda::CudaConfig::new(capacity);
            if let Some(d) = device {
                cfg.ordinal = d
                    .parse()
                    .map_err(|_| format!("CUDA devices are chosen by ordinal (0, 1, …), not {d:?}"))?;
            }
            rela_backend_cuda::CudaBackend::new(cfg).map(|b| Box::new(b) as Boxed).map_err(|e| e.to_string())
        }
    }
}

/// Tries CUDA, Vulkan and wgpu on `device` (a name substring or an index; CUDA only for an
/// index), logging why each one that is skipped was skipped. Never falls back to the host
/// backend: a device was asked for.
pub(crate) fn open_auto_on(
    capacity: u64,
    vk_validation: bool,
    device: &str,
) -> Result<(Boxed, BackendChoice), String> {
    first_that_opens(&[BackendChoice::Cuda, BackendChoice::Vulkan, BackendChoice::Wgpu], |choice| {
        open_on(choice, capacity, vk_validation, Some(device))
    })
}

/// The first of `choices` that `open` opens, logging why each one before it was skipped; all
/// the reasons if none opens.
fn first_that_opens(
    choices: &[BackendChoice],
    open: impl Fn(BackendChoice) -> Result<Boxed, String>,
) -> Result<(Boxed, BackendChoice), String> {
    let mut reasons = Vec::new();
    for &choice in choices {
        match open(choice) {
            Ok(b) => {
                let info = b.info();
                tracing::info!(backend = choice.name(), device = %info.name, "backend auto-selected");
                return Ok((b, choice));
            }
            Err(why) => {
                tracing::info!(backend = choice.name(), reason = %why, "backend not available");
                reasons.push(format!("{}: {why}", choice.name()));
            }
        }
    }
    Err(reasons.join("; "))
}

/// Whether a device name is a software rasterizer (Mesa's llvmpipe and lavapipe, softpipe,
/// SwiftShader, WARP): a "GPU" that runs on the CPU.
pub(crate) fn runs_on_cpu(device_name: &str) -> bool {
    let name = device_name.to_ascii_lowercase();
    ["llvmpipe", "lavapipe", "softpipe", "swiftshader", "microsoft basic render"]
        .iter()
        .any(|s| name.contains(s))
}

/// Tries CUDA, Vulkan, wgpu, then host, logging why each one that is skipped was skipped.
pub(crate) fn open_auto(capacity: u64, vk_validation: bool) -> Result<(Boxed, BackendChoice), String> {
    first_that_opens(
        &[BackendChoice::Cuda, BackendChoice::Vulkan, BackendChoice::Wgpu, BackendChoice::Host],
        |choice| open(choice, capacity, vk_validation),
    )
}
