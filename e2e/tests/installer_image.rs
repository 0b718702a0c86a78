//! The release artifacts: `make dist`'s tarball (`deploy/dist.sh`) and the installer image
//! (`berth-installer-image`) are reproducible (the same inputs give the same bytes and the same
//! digest), hold what a hand install and the DaemonSet need, and the image's OCI layout is
//! pushed to a registry by skopeo, as `make image REGISTRY=…` does, with its digest kept.
//! Running the installer on a systemd node is the node lane's `node_install`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_e2e::registry::{sha256_digest, TestRegistry};
use berth_e2e::{berthd_path, TempDir, TestAgent};
use k8s_cri::v1::*;

const TOP: &str = env!("CARGO_MANIFEST_DIR");

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `deploy/dist.sh` into `out`; returns the tarball's path.
fn dist(out: &Path) -> PathBuf {
    let script = Path::new(TOP).join("../deploy/dist.sh");
    let tarball = run(Command::new(script)
        .arg(berthd_path())
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1704067200"));
    PathBuf::from(tarball.trim())
}

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn installer_image(release: &Path, layout: &Path) -> String {
    run(Command::new(env!("CARGO_BIN_EXE_berth-installer-image"))
        .arg(release)
        .arg(layout)
        .arg("test"))
    .trim()
    .to_string()
}

#[test]
fn the_release_tarball_is_reproducible_and_holds_what_an_install_needs() {
    let a = TempDir::new("berth-e2e-dist");
    let b = TempDir::new("berth-e2e-dist");
    let (first, second) = (dist(a.path()), dist(b.path()));
    assert_eq!(first.file_name(), second.file_name());
    let name = first.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("berth-0.1.0-linux-") && name.ends_with(".tar.gz"),
        "{name}"
    );
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap(),
        "two builds of the same inputs differ"
    );
    let listed = run(Command::new("tar").arg("-tzf").arg(&first));
    let release = name.trim_end_matches(".tar.gz");
    for file in [
        "berthd",
        "install.sh",
        "berthd.service",
        "config.toml",
        "operations.md",
        "SHA256SUMS",
        "chart/Chart.yaml",
        "chart/values.yaml",
    ] {
        assert!(
            listed.lines().any(|l| l == format!("{release}/{file}")),
            "{file} missing:\n{listed}"
        );
    }
    // The sums cover every file and check out; the config is berthd's defaults.
    let dir = a.path().join(release);
    let sums = run(Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&dir));
    assert!(
        sums.contains("berthd: OK") && sums.contains("chart/values.yaml: OK"),
        "{sums}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        include_str!("../../deploy/config.toml")
    );
}

#[tokio::test]
async fn the_installer_image_builds_twice_to_the_same_digest_and_skopeo_pushes_it_unchanged() {
    let out = TempDir::new("berth-e2e-dist");
    let tarball = dist(out.path());
    let release = PathBuf::from(tarball.to_string_lossy().trim_end_matches(".tar.gz"));
    let (one, two) = (out.path().join("layout-1"), out.path().join("layout-2"));
    let digest = installer_image(&release, &one);
    assert_eq!(installer_image(&release, &two), digest);
    let layout = tree(&one);
    assert_eq!(layout, tree(&two), "the two layouts differ");
    let blob = |digest: &str| {
        layout
            .get(&format!(
                "blobs/sha256/{}",
                digest.trim_start_matches("sha256:")
            ))
            .unwrap_or_else(|| panic!("no blob {digest}"))
            .clone()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&digest)).unwrap();
    assert_eq!(sha256_digest(&blob(&digest)), digest);
    let index: serde_json::Value = serde_json::from_slice(&layout["index.json"]).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "test"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/opt/berth/install.sh"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["install"]));

    // skopeo, as `make image REGISTRY=…` runs it, keeps the digest.
    let registry = TestRegistry::start();
    run(Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:test", one.display()),
        &format!("docker://{}/berth/installer:test", registry.address()),
    ]));
    let (_, pushed) = registry.get_manifest("berth/installer", "test");
    assert_eq!(sha256_digest(&pushed), digest);

    // And berth pulls it: the payload layer holds the release's berthd.
    let agent = TestAgent::start().await;
    let reference = format!("{}/berth/installer:test", registry.address());
    let pulled = agent
        .image()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert_eq!(pulled, manifest["config"]["digest"].as_str().unwrap());
    let payload = blob(manifest["layers"][1]["digest"].as_str().unwrap());
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&payload[..]));
    let berthd = tar
        .entries()
        .unwrap()
        .flatten()
        .find(|e| e.path().unwrap() == Path::new("opt/berth/berthd"))
        .map(|mut e| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            (e.header().mode().unwrap(), bytes)
        })
        .expect("opt/berth/berthd in the payload layer");
    assert_eq!(berthd.0 & 0o777, 0o755);
    assert_eq!(berthd.1, std::fs::read(release.join("berthd")).unwrap());
}
