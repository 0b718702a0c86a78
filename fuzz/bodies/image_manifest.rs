//! The `image_manifest` fuzz target's body; its input and its checks are described in
//! `fuzz/fuzz_targets/image_manifest.rs`. libFuzzer runs it there, coverage-guided (`make fuzz`);
//! `e2e/tests/fuzz_targets.rs` runs it over the seeds and seeded mutations of them (`make test`).

use berth_image::manifest::{
    host_platform, kind, parse_config, parse_index, parse_manifest, select_platform, Kind,
    Platform, DOCKER_LIST, DOCKER_MANIFEST, MAX_CONFIG, OCI_INDEX, OCI_MANIFEST,
};

const MEDIA_TYPES: [&str; 7] = [
    OCI_INDEX,
    DOCKER_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    "application/json",
    "",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

fn platform(architecture: &str, variant: Option<&str>) -> Platform {
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: variant.map(str::to_string),
    }
}

pub fn run(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let media_type = MEDIA_TYPES[usize::from(pick) % MEDIA_TYPES.len()];
    // A pull reads the config whatever the manifest said, so every document is tried as one.
    let _ = parse_config(bytes);
    match kind(media_type, bytes) {
        Ok(Kind::Index) => {
            let Ok(index) = parse_index(bytes) else {
                return;
            };
            for wanted in [
                host_platform(),
                platform("arm64", Some("v8")),
                platform("arm", Some("v7")),
                platform("amd64", None),
            ] {
                if let Ok(chosen) = select_platform(&index, &wanted) {
                    let got = chosen.platform.as_ref().expect("chosen without a platform");
                    assert_eq!(
                        (got.os.as_str(), got.architecture.as_str()),
                        (wanted.os.as_str(), wanted.architecture.as_str()),
                        "asked for {wanted:?}"
                    );
                }
            }
        }
        Ok(Kind::Manifest) => {
            let Ok(manifest) = parse_manifest(bytes) else {
                return;
            };
            // What parse_manifest promises the download: every size is known and bounded.
            assert!((1..=MAX_CONFIG).contains(&manifest.config.size));
            assert!(manifest.layers.iter().all(|l| l.size > 0));
        }
        Err(_) => {}
    }
}
