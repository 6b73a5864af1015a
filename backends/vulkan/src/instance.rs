//! Loader, instance, validation messenger and physical-device selection.

use core::fmt;
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use vulkano::{
    VulkanLibrary,
    device::{
        QueueFlags,
        physical::{PhysicalDevice, PhysicalDeviceType},
    },
    instance::{
        Instance, InstanceCreateFlags, InstanceCreateInfo, InstanceExtensions,
        debug::{
            DebugUtilsMessageSeverity, DebugUtilsMessageType, DebugUtilsMessenger,
            DebugUtilsMessengerCallback, DebugUtilsMessengerCreateInfo,
        },
    },
};

use crate::{InitError, error::describe};

/// The Khronos validation layer's name.
const VALIDATION_LAYER: &str = "VK_LAYER_KHRONOS_validation";

/// Which physical device a [`VulkanBackend`](crate::VulkanBackend) uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceSelector {
    /// The best device with a compute queue: discrete, then integrated, then virtual, then CPU.
    #[default]
    Auto,
    /// The device at this index of [`list_devices`].
    Index(usize),
    /// The first device whose name contains this string (ASCII case-insensitive).
    Name(String),
}

/// The kind of a physical device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// A discrete GPU.
    Discrete,
    /// A GPU integrated with the CPU.
    Integrated,
    /// A virtual GPU.
    Virtual,
    /// A software implementation on the CPU (lavapipe, SwiftShader).
    Cpu,
    /// Anything else.
    Other,
}

impl DeviceType {
    fn of(t: PhysicalDeviceType) -> Self {
        match t {
            PhysicalDeviceType::DiscreteGpu => Self::Discrete,
            PhysicalDeviceType::IntegratedGpu => Self::Integrated,
            PhysicalDeviceType::VirtualGpu => Self::Virtual,
            PhysicalDeviceType::Cpu => Self::Cpu,
            _ => Self::Other,
        }
    }

    /// Preference rank for [`DeviceSelector::Auto`]; lower is better.
    const fn rank(self) -> u8 {
        match self {
            Self::Discrete => 0,
            Self::Integrated => 1,
            Self::Virtual => 2,
            Self::Cpu => 3,
            Self::Other => 4,
        }
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Discrete => "discrete",
            Self::Integrated => "integrated",
            Self::Virtual => "virtual",
            Self::Cpu => "cpu",
            Self::Other => "other",
        })
    }
}

/// Lists the Vulkan physical devices as `(index, name, type)`, in the order
/// [`DeviceSelector::Index`] uses. For logging and device selection.
pub fn list_devices() -> Result<Vec<(usize, String, DeviceType)>, InitError> {
    let (instance, _) = create_instance(false)?;
    Ok(physical_devices(&instance)?
        .iter()
        .enumerate()
        .map(|(i, pd)| (i, pd.properties().device_name.clone(), DeviceType::of(pd.properties().device_type)))
        .collect())
}

/// An instance, plus the messenger and message counter when validation is on.
pub(crate) struct Validation {
    /// Keeps the callback registered for the instance's lifetime.
    pub(crate) _messenger: DebugUtilsMessenger,
    /// Warnings and errors reported so far.
    pub(crate) count: Arc<AtomicU64>,
}

/// Loads the Vulkan library and creates an instance, with the validation layer and a counting
/// debug messenger when `validation` is set.
pub(crate) fn create_instance(validation: bool) -> Result<(Arc<Instance>, Option<Validation>), InitError> {
    let library =
        VulkanLibrary::new().map_err(|e| InitError::Unavailable(format!("no Vulkan loader: {e}")))?;
    let supported = *library.supported_extensions();
    let mut extensions = InstanceExtensions {
        khr_portability_enumeration: supported.khr_portability_enumeration,
        ..InstanceExtensions::empty()
    };
    let flags = if supported.khr_portability_enumeration {
        InstanceCreateFlags::ENUMERATE_PORTABILITY
    } else {
        InstanceCreateFlags::empty()
    };
    let mut layers = Vec::new();
    let mut messengers = Vec::new();
    let count = Arc::new(AtomicU64::new(0));
    if validation {
        let present = library
            .layer_properties()
            .map_err(|e| InitError::Unavailable(format!("cannot list layers: {e}")))?
            .any(|l| l.name() == VALIDATION_LAYER);
        if !present {
            return Err(InitError::ValidationUnavailable(format!("{VALIDATION_LAYER} is not installed")));
        }
        let with_layer = library
            .supported_extensions_with_layers([VALIDATION_LAYER])
            .map_err(|e| InitError::ValidationUnavailable(format!("cannot list layer extensions: {e}")))?;
        if !with_layer.ext_debug_utils {
            return Err(InitError::ValidationUnavailable("VK_EXT_debug_utils is not available".into()));
        }
        extensions.ext_debug_utils = true;
        layers.push(VALIDATION_LAYER.to_owned());
        messengers.push(messenger_info(count.clone()));
    }
    let instance = Instance::new(
        library,
        InstanceCreateInfo {
            flags,
            application_name: Some("vram-relay".into()),
            engine_name: Some("rela-backend-vulkan".into()),
            enabled_layers: layers,
            enabled_extensions: extensions,
            debug_utils_messengers: messengers,
            ..Default::default()
        },
    )
    .map_err(|e| match e {
        vulkano::Validated::Error(vulkano::VulkanError::LayerNotPresent) => {
            InitError::ValidationUnavailable(format!("{VALIDATION_LAYER} failed to load"))
        }
        vulkano::Validated::Error(
            vulkano::VulkanError::IncompatibleDriver | vulkano::VulkanError::InitializationFailed,
        ) => InitError::Unavailable(format!("no usable Vulkan driver: {}", describe(&e))),
        e => InitError::Device(format!("instance creation failed: {}", describe(&e))),
    })?;
    let validation = if validation {
        let messenger = DebugUtilsMessenger::new(instance.clone(), messenger_info(count.clone()))
            .map_err(|e| InitError::ValidationUnavailable(format!("debug messenger: {}", describe(&e))))?;
        Some(Validation { _messenger: messenger, count })
    } else {
        None
    };
    Ok((instance, validation))
}

/// A messenger that logs every warning and error to stderr and counts it.
fn messenger_info(count: Arc<AtomicU64>) -> DebugUtilsMessengerCreateInfo {
    // SAFETY: the callback calls no Vulkan function; it only bumps an atomic and writes stderr.
    let callback = unsafe {
        DebugUtilsMessengerCallback::new(move |severity, ty, data| {
            count.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "rela-backend-vulkan: validation {severity:?} {ty:?} [{}]: {}",
                data.message_id_name.unwrap_or("-"),
                data.message
            );
        })
    };
    DebugUtilsMessengerCreateInfo {
        message_severity: DebugUtilsMessageSeverity::ERROR | DebugUtilsMessageSeverity::WARNING,
        message_type: DebugUtilsMessageType::GENERAL
            | DebugUtilsMessageType::VALIDATION
            | DebugUtilsMessageType::PERFORMANCE,
        ..DebugUtilsMessengerCreateInfo::user_callback(callback)
    }
}

fn physical_devices(instance: &Arc<Instance>) -> Result<Vec<Arc<PhysicalDevice>>, InitError> {
    Ok(instance
        .enumerate_physical_devices()
        .map_err(|e| InitError::Unavailable(format!("cannot enumerate devices: {e}")))?
        .collect())
}

/// The index of a queue family that supports compute (and therefore transfer).
pub(crate) fn compute_family(pd: &PhysicalDevice) -> Option<u32> {
    let families = pd.queue_family_properties();
    // Prefer a family with compute; any compute family also accepts transfer commands.
    families
        .iter()
        .position(|q| q.queue_flags.intersects(QueueFlags::COMPUTE) && q.queue_count > 0)
        .and_then(|i| u32::try_from(i).ok())
}

/// Picks the physical device and its compute queue family.
pub(crate) fn select(
    instance: &Arc<Instance>,
    selector: &DeviceSelector,
) -> Result<(Arc<PhysicalDevice>, u32), InitError> {
    let devices = physical_devices(instance)?;
    if devices.is_empty() {
        return Err(InitError::Unavailable("no Vulkan physical devices".into()));
    }
    let with_queue = |pd: &Arc<PhysicalDevice>| compute_family(pd).map(|q| (pd.clone(), q));
    let found = match selector {
        DeviceSelector::Auto => devices
            .iter()
            .filter_map(with_queue)
            .min_by_key(|(pd, _)| DeviceType::of(pd.properties().device_type).rank()),
        DeviceSelector::Index(i) => {
            let pd = devices.get(*i).ok_or_else(|| {
                InitError::Unavailable(format!("no device at index {i} ({} devices)", devices.len()))
            })?;
            with_queue(pd)
        }
        DeviceSelector::Name(name) => {
            let want = name.to_ascii_lowercase();
            let pd = devices
                .iter()
                .find(|pd| pd.properties().device_name.to_ascii_lowercase().contains(&want))
                .ok_or_else(|| InitError::Unavailable(format!("no device name contains {name:?}")))?;
            with_queue(pd)
        }
    };
    found.ok_or_else(|| InitError::Unavailable("no device with a compute queue".into()))
}
