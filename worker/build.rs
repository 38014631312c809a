//! With the `cuda` feature: the decode step's kernels (kernels/*.cu) compiled to PTX by nvcc,
//! the way candle-kernels builds its own; `fast::kernels` includes them.

fn main() {
    #[cfg(feature = "cuda")]
    {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let ptx = cudaforge::KernelBuilder::new()
            .source_dir("kernels")
            .arg("--expt-relaxed-constexpr")
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()
            .unwrap_or_else(|e| panic!("compiling worker/kernels with nvcc: {e}"));
        ptx.write(out.join("ptx.rs"))
            .unwrap_or_else(|e| panic!("writing the PTX list: {e}"));
    }
}
