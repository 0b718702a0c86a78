//! `berth-installer-image <release dir> <layout dir> <tag>`: builds the installer image from a
//! release directory (`make dist`) and writes it as an OCI image layout; prints its manifest
//! digest. `make image` runs it, and pushes the layout with skopeo when REGISTRY is set.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dist, out, tag] = args.as_slice() else {
        eprintln!("usage: berth-installer-image <release dir> <OCI layout dir> <tag>");
        return ExitCode::from(2);
    };
    let built = berth_e2e::installer::image(Path::new(dist), tag).map(|image| image.build());
    match built.and_then(|image| {
        berth_e2e::installer::write_layout(&image, Path::new(out), tag).map(|()| image)
    }) {
        Ok(image) => {
            println!("{}", image.manifest_digest);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth-installer-image: {e}");
            ExitCode::FAILURE
        }
    }
}
