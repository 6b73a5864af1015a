//! Entry points for the fuzz targets in `fuzz/`. Not a stable API.
