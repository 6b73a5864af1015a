//! Shared test setup: build a backend, or skip loudly when no Vulkan device is present.

#![allow(dead_code, unreachable_pub)]

use rela_backend_vulkan::{VulkanBackend, VulkanConfig};

/// Capacity of the backends under test.
pub const CAPACITY: u64 = 256 << 20;

/// Whether `RELA_VK_VALIDATION=1` asks for the validation layer.
pub fn validation_requested() -> bool {
    std::env::var("RELA_VK_VALIDATION").is_ok_and(|v| v == "1")
}

/// Whether `RELA_REQUIRE_BACKENDS` lists `vulkan`.
pub fn required() -> bool {
    std::env::var("RELA_REQUIRE_BACKENDS")
        .is_ok_and(|v| v.split([',', ' ', ':']).any(|name| name.trim().eq_ignore_ascii_case("vulkan")))
}

/// The config every test uses.
pub fn config(capacity: u64) -> VulkanConfig {
    VulkanConfig { validation: validation_requested(), ..VulkanConfig::new(capacity) }
}

/// A backend with `capacity` bytes, or `None` (after printing why) when Vulkan is unavailable.
/// Panics instead when `RELA_REQUIRE_BACKENDS` lists `vulkan`.
pub fn try_backend(capacity: u64) -> Option<VulkanBackend> {
    match VulkanBackend::new(config(capacity)) {
        Ok(b) => Some(b),
        Err(e) if required() => panic!("vulkan backend required but unavailable: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: vulkan backend unavailable: {e}");
            None
        }
    }
}

// Not every test file that includes this module uses all of them.
#[allow(unused_imports)]
pub use rela_test_support::{f32_bytes, pattern, small_floats};
