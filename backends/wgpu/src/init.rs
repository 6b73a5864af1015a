//! Instance, adapter and device set-up, the error handlers, and the kernel pipelines.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rela_core::backend::MAX_ATTENTION_SEQ;
use rela_kernels::{Kernel, TILE, WORKGROUP_1D};

use crate::{Api, InitError, WgpuConfig};

/// Storage buffers the kernels bind at once (binary and matmul: `a`, `b`, `out`).
const STORAGE_BUFFERS_NEEDED: u32 = 3;

/// Lists the adapters wgpu finds for `api`, one line each: `"index: name (backend, type,
/// driver)"`. The index is what [`WgpuConfig::adapter`] accepts. Empty when there are none or
/// wgpu fails to start.
pub fn list_adapters(api: Api) -> Vec<String> {
    match enumerate(api) {
        Ok(adapters) => adapters.iter().enumerate().map(|(i, a)| describe(i, a)).collect(),
        Err(_) => Vec::new(),
    }
}

fn describe(index: usize, adapter: &wgpu::Adapter) -> String {
    let info = adapter.get_info();
    format!(
        "{index}: {} ({:?}, {:?}, {} {})",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    )
}

/// Starts wgpu for `api` and enumerates its adapters. wgpu can panic while loading drivers
/// (for example EGL without 1.5); that is caught and reported as unavailable.
fn enumerate(api: Api) -> Result<Vec<wgpu::Adapter>, InitError> {
    let run = || {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = api.backends();
        // Validation in debug builds, but no shader debug info: naga then tags SPIR-V with the
        // WGSL source language, which the Khronos validation layer of Debian 12 (1.3.239)
        // rejects as invalid SPIR-V. `WGPU_DEBUG=1` still turns it on.
        let mut flags = wgpu::InstanceFlags::from_build_config();
        flags.remove(wgpu::InstanceFlags::DEBUG);
        desc.flags = flags.with_env();
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(api.backends()))
    };
    catch_unwind(AssertUnwindSafe(run))
        .map_err(|p| InitError::Unavailable(format!("wgpu panicked starting {api}: {}", panic_text(&p))))
}

fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Why `adapter` cannot run the kernels, if it cannot.
fn unsuitable(adapter: &wgpu::Adapter) -> Option<String> {
    let caps = adapter.get_downlevel_capabilities();
    let l = adapter.limits();
    if !caps.flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
        Some("no compute shaders".to_owned())
    } else if l.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS_NEEDED {
        Some(format!("{} storage buffers per stage", l.max_storage_buffers_per_shader_stage))
    } else if l.max_compute_invocations_per_workgroup < WORKGROUP_1D
        || l.max_compute_workgroup_size_x < WORKGROUP_1D
        || l.max_compute_workgroup_size_y < TILE
    {
        Some("compute workgroups too small".to_owned())
    } else if l.max_compute_workgroup_storage_size < 2 * TILE * TILE * 4
        // ATTENTION holds one score per key.
        || l.max_compute_workgroup_storage_size < MAX_ATTENTION_SEQ * 4
    {
        Some("workgroup storage too small".to_owned())
    } else {
        None
    }
}

fn rank(adapter: &wgpu::Adapter) -> u8 {
    match adapter.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn select(config: &WgpuConfig) -> Result<wgpu::Adapter, InitError> {
    let adapters = enumerate(config.backends)?;
    if adapters.is_empty() {
        return Err(InitError::Unavailable(format!("wgpu found no {} adapter", config.backends)));
    }
    let chosen = match &config.adapter {
        Some(wanted) => {
            let lower = wanted.to_lowercase();
            let found = match wanted.trim().parse::<usize>() {
                Ok(i) => adapters.get(i),
                Err(_) => adapters.iter().find(|a| a.get_info().name.to_lowercase().contains(&lower)),
            };
            let Some(found) = found else {
                return Err(InitError::NoMatchingAdapter {
                    wanted: wanted.clone(),
                    available: adapters.iter().enumerate().map(|(i, a)| describe(i, a)).collect(),
                });
            };
            if let Some(why) = unsuitable(found) {
                return Err(InitError::Unsupported(format!("{}: {why}", found.get_info().name)));
            }
            found
        }
        None => {
            let best = adapters.iter().filter(|a| unsuitable(a).is_none()).min_by_key(|a| rank(a));
            match best {
                Some(a) => a,
                None => {
                    let why: Vec<String> = adapters
                        .iter()
                        .map(|a| format!("{}: {}", a.get_info().name, unsuitable(a).unwrap_or_default()))
                        .collect();
                    return Err(InitError::Unsupported(why.join("; ")));
                }
            }
        }
    };
    Ok(chosen.clone())
}

/// What the device's error handlers record. Shared with wgpu's callbacks.
#[derive(Debug, Default)]
pub(crate) struct Fault {
    /// The device was lost: permanent.
    lost: AtomicBool,
    /// An uncaptured error since the last [`Fault::take`].
    pending: AtomicBool,
    /// The most recent message, for logging.
    message: Mutex<Option<String>>,
}

impl Fault {
    fn record(&self, message: String, lost: bool) {
        if lost {
            self.lost.store(true, Ordering::SeqCst);
        }
        self.pending.store(true, Ordering::SeqCst);
        // A poisoned lock only means another recorder panicked mid-write; the slot is still
        // a valid `Option<String>`, so keep using it.
        let mut slot = self.message.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(message);
    }

    /// Whether the device is lost for good.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Clears and returns whether an error was recorded since the last call.
    pub(crate) fn take(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst) || self.is_lost()
    }

    /// The most recent recorded message.
    pub(crate) fn message(&self) -> Option<String> {
        self.message.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The compiled kernels and their bind group layouts.
#[derive(Debug)]
pub(crate) struct Pipelines {
    /// Indexed by `Kernel as usize`; `None` where the device binds too few storage buffers per
    /// stage for the kernel (its calls are `Unsupported`).
    kernels: Vec<Option<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>>,
}

impl Pipelines {
    /// The pipeline and bind group layout of `kernel`, if the device can run it.
    pub(crate) fn get(&self, kernel: Kernel) -> Option<(&wgpu::ComputePipeline, &wgpu::BindGroupLayout)> {
        self.kernels.get(kernel as usize).and_then(Option::as_ref).map(|(p, l)| (p, l))
    }
}

/// An opened device, ready for [`crate::WgpuBackend`].
pub(crate) struct Opened {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) fault: Arc<Fault>,
    pub(crate) pipelines: Pipelines,
}

pub(crate) fn open(config: &WgpuConfig) -> Result<Opened, InitError> {
    let adapter = select(config)?;
    let info = adapter.get_info();
    let desc = wgpu::DeviceDescriptor {
        label: Some("rela"),
        required_features: wgpu::Features::empty(),
        // The adapter's best limits: the largest buffers and bindings it allows.
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::Performance,
        ..Default::default()
    };
    let (device, queue) =
        catch_unwind(AssertUnwindSafe(|| pollster::block_on(adapter.request_device(&desc))))
            .map_err(|p| InitError::Device(panic_text(&p)))?
            .map_err(|e| InitError::Device(e.to_string()))?;

    let fault = Arc::new(Fault::default());
    let on_error = Arc::clone(&fault);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| on_error.record(e.to_string(), false)));
    let on_lost = Arc::clone(&fault);
    device.set_device_lost_callback(move |reason, message| {
        on_lost.record(format!("device lost ({reason:?}): {message}"), true);
    });

    let pipelines = compile(&device)?;
    let limits = device.limits();
    Ok(Opened { device, queue, info, limits, fault, pipelines })
}

fn compile(device: &wgpu::Device) -> Result<Pipelines, InitError> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let make = |name: &str, source: &str| {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        (pipeline, layout)
    };
    let limits = device.limits();
    let max_storage = limits.max_storage_buffers_per_shader_stage;
    // `LinearTiled`'s 16×16 workgroups need 256 invocations and 8.5 KiB of workgroup memory,
    // above the minimum some adapters offer (which then keep the CPU shapes).
    let tiled_fits = limits.max_compute_invocations_per_workgroup >= 256
        && limits.max_compute_workgroup_storage_size >= 8704;
    let kernels = Kernel::ALL
        .iter()
        .map(|&k| {
            let fits = k.storage_buffers() <= max_storage && (k != Kernel::LinearTiled || tiled_fits);
            fits.then(|| make(k.name(), k.wgsl()))
        })
        .collect();
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(InitError::Shader(e.to_string()));
    }
    Ok(Pipelines { kernels })
}
