//! Links berthd as a non-PIE executable. A PIE of this size has ~580 KiB of pointers in
//! .data.rel.ro that the dynamic loader relocates at every start, turning them into private
//! dirty pages in each process; for the per-pod monitor (the same binary) that alone is a
//! third of its memory. Non-PIE, they stay clean file pages, loaded only where touched.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
