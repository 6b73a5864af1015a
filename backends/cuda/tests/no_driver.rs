//! Construction without a usable CUDA installation: a typed error, never a panic.

use rela_backend_cuda::{CudaBackend, CudaConfig, InitError, driver_present, nvrtc_present};

#[test]
fn construction_reports_unavailable_without_panicking() {
    let driver = driver_present();
    let nvrtc = nvrtc_present();
    println!("libcuda present: {driver}, libnvrtc present: {nvrtc}");
    let result = std::panic::catch_unwind(|| CudaBackend::new(CudaConfig::new(1 << 20)));
    let result = match result {
        Ok(result) => result,
        Err(_) => panic!("CudaBackend::new panicked"),
    };
    match result {
        Err(InitError::Unavailable(why)) => println!("CUDA backend unavailable (as expected here): {why}"),
        Err(other) => {
            assert!(
                driver && nvrtc,
                "without libcuda or libnvrtc the error must be Unavailable, got {other:?}"
            );
            println!("CUDA libraries present but construction failed: {other}");
        }
        Ok(backend) => {
            assert!(driver && nvrtc, "construction cannot succeed without the libraries");
            println!("CUDA backend available on {:?}", rela_core::backend::GpuBackend::info(&backend));
        }
    }
    if !driver || !nvrtc {
        assert!(matches!(CudaBackend::new(CudaConfig::new(1 << 20)), Err(InitError::Unavailable(_))));
    }
}

#[test]
fn missing_ordinal_is_unavailable_or_library_missing() {
    let err = CudaBackend::new(CudaConfig { capacity: 1 << 20, ordinal: usize::MAX }).err();
    println!("ordinal usize::MAX: {err:?}");
    assert!(matches!(err, Some(InitError::Unavailable(_))), "got {err:?}");
}

#[test]
fn zero_capacity_is_rejected_before_touching_cuda() {
    let err = CudaBackend::new(CudaConfig { capacity: 0, ordinal: 0 }).err();
    assert!(matches!(err, Some(InitError::InvalidConfig(_))), "got {err:?}");
    if let Some(e) = err {
        assert!(!e.to_string().is_empty());
    }
}
