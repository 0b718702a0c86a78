//! The image service end to end: a real berthd pulling from Debian's registry on loopback.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_e2e::fault::{Fault, FaultProxy};
use berth_e2e::images::{Compression, Hostile, ImageBuilder, IndexBuilder, Platform, PushedImage};
use berth_e2e::registry::{http_request, TestRegistry};
use berth_e2e::TestAgent;
use berth_image::digest::{chain_ids, Digest};
use k8s_cri::v1::*;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(agent: &TestAgent, image: &str) -> Result<String, tonic::Status> {
    pull_with(agent, image, None).await
}

async fn pull_with(
    agent: &TestAgent,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    agent
        .image()
        .await
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// A pull left running on its own task, for a test to watch while it lasts.
async fn spawn_pull(
    agent: &TestAgent,
    reference: String,
) -> tokio::task::JoinHandle<Result<tonic::Response<PullImageResponse>, tonic::Status>> {
    let mut client = agent.image().await;
    tokio::spawn(async move {
        client
            .pull_image(PullImageRequest {
                image: spec(&reference),
                auth: None,
                sandbox_config: None,
            })
            .await
    })
}

async fn status(agent: &TestAgent, image: &str, verbose: bool) -> ImageStatusResponse {
    agent
        .image()
        .await
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn remove(agent: &TestAgent, image: &str) {
    agent
        .image()
        .await
        .remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .unwrap();
}

/// The unpacked directory of the image's top layer, etc.: `snapshots/<chain>/fs`.
fn snapshot_fs(agent: &TestAgent, image: &PushedImage, layer: usize) -> PathBuf {
    let diffs: Vec<Digest> = image.diff_ids.iter().map(|d| d.parse().unwrap()).collect();
    let chain = &chain_ids(&diffs)[layer];
    agent
        .paths
        .root
        .join("snapshots")
        .join(chain.hex())
        .join("fs")
}

fn blob_path(agent: &TestAgent, digest: &str) -> PathBuf {
    agent
        .paths
        .root
        .join("content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Files in a directory (not recursive), for "nothing half-stored" checks.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn pull_single_layer_image_then_status_by_every_name() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox().push(&registry, "test/single", "v1");
    let agent = TestAgent::start().await;
    let id = pull(&agent, &image.image_ref()).await.unwrap();
    assert_eq!(id, image.config_digest, "PullImage returns the image id");

    let digest_ref = image.digest_ref();
    let short = &id["sha256:".len().."sha256:".len() + 12];
    for name in [
        id.as_str(),
        &id[7..],
        short,
        &image.image_ref(),
        &digest_ref,
    ] {
        let s = status(&agent, name, false).await;
        let i = s
            .image
            .unwrap_or_else(|| panic!("ImageStatus({name}) found nothing"));
        assert_eq!(i.id, id);
        assert_eq!(i.repo_tags, [image.image_ref()]);
        assert_eq!(i.repo_digests, std::slice::from_ref(&digest_ref));
        let expected_size: u64 =
            image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.len() as u64;
        assert_eq!(i.size, expected_size);
        assert_eq!(i.uid, None);
        assert!(s.info.is_empty());
    }
    let verbose = status(&agent, &id, true).await;
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");

    // CRI: an unknown image is an empty answer, not an error.
    assert!(status(&agent, "127.0.0.1:1/none/such:tag", false)
        .await
        .image
        .is_none());

    let list = agent
        .image()
        .await
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 1);
    let filtered = agent
        .image()
        .await
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec("nothing:here"),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(filtered.images.is_empty());

    // The unpacked layer is a busybox rootfs.
    let fs = snapshot_fs(&agent, &image, 0);
    assert!(fs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(fs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );

    let fsinfo = agent
        .image()
        .await
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fsinfo.image_filesystems[0];
    assert!(usage.used_bytes.as_ref().unwrap().value > 1_000_000);
    assert!(usage.inodes_used.as_ref().unwrap().value > 10);
    assert_eq!(
        usage.fs_id.as_ref().unwrap().mountpoint,
        agent.paths.root.to_str().unwrap()
    );

    assert_eq!(
        agent.metric(r#"berth_image_pulls_total{outcome="success"}"#),
        1.0
    );
}

#[tokio::test]
async fn pull_by_digest_and_by_tag_plus_digest() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox()
        .label("v", "digest")
        .push(&registry, "test/bydigest", "v1");
    let agent = TestAgent::start().await;
    assert_eq!(
        pull(&agent, &image.digest_ref()).await.unwrap(),
        image.config_digest
    );
    let i = status(&agent, &image.digest_ref(), false)
        .await
        .image
        .unwrap();
    assert!(i.repo_tags.is_empty(), "a digest pull records no tag");
    let both = format!("{}@{}", image.image_ref(), image.manifest_digest);
    assert_eq!(pull(&agent, &both).await.unwrap(), image.config_digest);
}

#[tokio::test]
async fn multi_layer_whiteout_and_opaque_layers_unpack_in_overlay_form() {
    let registry = TestRegistry::start();
    let multi = ImageBuilder::multi_layer().push(&registry, "test/multi", "v1");
    let wh = ImageBuilder::whiteouts().push(&registry, "test/whiteouts", "v1");
    let agent = TestAgent::start().await;
    pull(&agent, &multi.image_ref()).await.unwrap();
    assert_eq!(
        std::fs::read(snapshot_fs(&agent, &multi, 2).join("etc/motd")).unwrap(),
        b"layer 3\n"
    );
    assert_eq!(
        std::fs::read(snapshot_fs(&agent, &multi, 1).join("etc/motd")).unwrap(),
        b"layer 2\n"
    );

    pull(&agent, &wh.image_ref()).await.unwrap();
    // The busybox layer is shared with the first image: reused, not unpacked again.
    assert!(agent.metric("berth_image_layers_reused_total") >= 1.0);
    let upper = snapshot_fs(&agent, &wh, 2);
    let whiteout = std::fs::symlink_metadata(upper.join("etc/removed.txt")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    let opaque = nix_getxattr(&upper.join("opaque"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert!(upper.join("opaque/new.txt").is_file());
    assert!(snapshot_fs(&agent, &wh, 1).join("etc/kept.txt").is_file());
}

fn nix_getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .ok();
    match out {
        Some(o) if o.status.success() => Some(o.stdout),
        // getfattr missing: read it through the raw syscall.
        _ => {
            let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
            let c_name = std::ffi::CString::new(name).ok()?;
            let mut buf = vec![0u8; 256];
            // SAFETY: both strings are NUL-terminated and buf is valid for its length.
            let n = unsafe {
                libc::lgetxattr(
                    c_path.as_ptr(),
                    c_name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            (n >= 0).then(|| {
                buf.truncate(n as usize);
                buf
            })
        }
    }
}

#[tokio::test]
async fn image_user_becomes_uid_or_username() {
    let registry = TestRegistry::start();
    let by_uid = ImageBuilder::busybox()
        .user("1000:1000")
        .push(&registry, "test/user-uid", "v1");
    let by_name =
        ImageBuilder::with_passwd()
            .user("nobody")
            .push(&registry, "test/user-name", "v1");
    let agent = TestAgent::start().await;
    pull(&agent, &by_uid.image_ref()).await.unwrap();
    pull(&agent, &by_name.image_ref()).await.unwrap();
    let u = status(&agent, &by_uid.image_ref(), false)
        .await
        .image
        .unwrap();
    assert_eq!(u.uid.map(|v| v.value), Some(1000));
    assert_eq!(u.username, "");
    let n = status(&agent, &by_name.image_ref(), false)
        .await
        .image
        .unwrap();
    assert_eq!(n.uid, None);
    assert_eq!(n.username, "nobody");
}

#[tokio::test]
async fn index_and_manifest_list_resolve_to_this_platform() {
    let registry = TestRegistry::start();
    let oci = IndexBuilder::multi_platform().push(&registry, "test/index", "v1");
    let docker = IndexBuilder::multi_platform()
        .docker()
        .push(&registry, "test/list", "v1");
    let agent = TestAgent::start().await;
    for index in [&oci, &docker] {
        let host = index
            .image_for(&Platform::host())
            .expect("index has this platform");
        assert_eq!(
            pull(&agent, &index.image_ref()).await.unwrap(),
            host.config_digest
        );
        let i = status(&agent, &index.image_ref(), false)
            .await
            .image
            .unwrap();
        // The repo digest is the index's, as kubelet and containerd report it. (Both indexes
        // hold the same amd64 image, so the second pull adds its digest to the same record.)
        let repo_digest = format!("{}/{}@{}", index.registry, index.repo, index.digest);
        assert!(
            i.repo_digests.contains(&repo_digest),
            "{:?}",
            i.repo_digests
        );
        assert!(snapshot_fs(&agent, host, 0).join("bin/busybox").is_file());
    }
}

#[tokio::test]
async fn gzip_zstd_uncompressed_and_docker_images_unpack_alike() {
    let registry = TestRegistry::start();
    let variants = [
        ImageBuilder::multi_layer()
            .compression(Compression::Gzip)
            .push(&registry, "test/gzip", "v1"),
        ImageBuilder::multi_layer()
            .compression(Compression::Zstd)
            .push(&registry, "test/zstd", "v1"),
        ImageBuilder::multi_layer()
            .compression(Compression::None)
            .push(&registry, "test/plain", "v1"),
        ImageBuilder::multi_layer()
            .docker()
            .push(&registry, "test/docker", "v1"),
    ];
    // Same uncompressed content → the same diff ids, whatever the wire format.
    for v in &variants[1..] {
        assert_eq!(v.diff_ids, variants[0].diff_ids, "{}", v.image_ref());
    }
    let layers = variants[0].diff_ids.len();
    assert!(layers >= 3);
    for v in &variants {
        // A store of its own each: every layer is downloaded, decompressed and unpacked here,
        // not found from an earlier variant.
        let agent = TestAgent::start().await;
        // A pull that never ends is a failure here, not a hang of the suite.
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            pull(&agent, &v.image_ref()),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: the pull never finished", v.image_ref()))
        .unwrap_or_else(|e| panic!("{}: {e}", v.image_ref()));
        assert_eq!(
            agent.metric("berth_image_layers_unpacked_total"),
            layers as f64,
            "{}",
            v.image_ref()
        );
        assert_eq!(agent.metric("berth_image_layers_reused_total"), 0.0);
        for n in 1..layers {
            assert_eq!(
                std::fs::read(snapshot_fs(&agent, v, n).join(format!("etc/layer{}", n + 1)))
                    .unwrap_or_else(|e| panic!("{} layer {n}: {e}", v.image_ref())),
                format!("{}\n", n + 1).as_bytes(),
                "{} layer {n}",
                v.image_ref()
            );
        }
        assert!(snapshot_fs(&agent, v, 0).join("bin/busybox").is_file());
    }
}

#[tokio::test]
async fn token_auth_with_every_kind_of_credential() {
    let registry = TestRegistry::start_with_token_auth(&[("alice", "s3cret")]);
    let image = ImageBuilder::busybox().push(&registry, "private/app", "v1");
    let agent = TestAgent::start().await;
    let reference = image.image_ref();

    let err = pull(&agent, &reference).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = pull_with(
        &agent,
        &reference,
        Some(AuthConfig {
            username: "alice".into(),
            password: "wrong".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    let by_password = AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    pull_with(&agent, &reference, Some(by_password))
        .await
        .unwrap();
    remove(&agent, &reference).await;

    let by_auth = AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(), // alice:s3cret
        ..Default::default()
    };
    pull_with(&agent, &reference, Some(by_auth)).await.unwrap();
    remove(&agent, &reference).await;

    // An identity token is an OAuth2 refresh token from the same token server.
    let realm = registry.realm().unwrap();
    let (host, path) = realm.trim_start_matches("http://").split_once('/').unwrap();
    let form = "grant_type=password&username=alice&password=s3cret&service=berth-test-registry&scope=repository%3Aprivate%2Fapp%3Apull&client_id=test&access_type=offline";
    let answer = http_request(
        host,
        "POST",
        &format!("/{path}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let refresh = body["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_string();
    let by_identity = AuthConfig {
        identity_token: refresh,
        ..Default::default()
    };
    pull_with(&agent, &reference, Some(by_identity))
        .await
        .unwrap();
    remove(&agent, &reference).await;

    // A registry token is sent as the bearer token itself.
    let token = body["access_token"].as_str().unwrap().to_string();
    let by_token = AuthConfig {
        registry_token: token,
        ..Default::default()
    };
    pull_with(&agent, &reference, Some(by_token)).await.unwrap();
    assert!(registry.token_requests() >= 4);
}

#[tokio::test]
async fn remove_image_drops_every_tag_frees_storage_and_is_idempotent() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::multi_layer().push(&registry, "test/rm", "v1");
    let second_tag = format!("{}/test/rm:v2", registry.address());
    registry.push_manifest("test/rm", "v2", &image.media_type, &image.manifest);
    let agent = TestAgent::start().await;
    pull(&agent, &image.image_ref()).await.unwrap();
    pull(&agent, &second_tag).await.unwrap();
    let i = status(&agent, &second_tag, false).await.image.unwrap();
    assert_eq!(i.repo_tags.len(), 2);

    remove(&agent, &second_tag).await;
    assert!(
        status(&agent, &image.image_ref(), false)
            .await
            .image
            .is_none(),
        "all tags go"
    );
    assert!(entries(&agent.paths.root.join("snapshots")).is_empty());
    assert!(entries(&agent.paths.root.join("content/blobs/sha256")).is_empty());
    assert!(entries(&agent.paths.root.join("images")).is_empty());
    // CRI: removing what is not there succeeds.
    remove(&agent, &second_tag).await;
    remove(
        &agent,
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    )
    .await;
}

#[tokio::test]
async fn images_survive_an_agent_kill_and_restart() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox().push(&registry, "test/restart", "v1");
    let mut agent = TestAgent::start().await;
    pull(&agent, &image.image_ref()).await.unwrap();
    agent.restart_with(nix::sys::signal::Signal::SIGKILL).await;
    let i = status(&agent, &image.image_ref(), false)
        .await
        .image
        .expect("image survives the restart");
    assert_eq!(i.id, image.config_digest);
    assert!(snapshot_fs(&agent, &image, 0).join("bin/busybox").exists());
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_share_the_download() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::multi_layer().push(&registry, "test/concurrent", "v1");
    let proxy = FaultProxy::start(&registry.address());
    let reference = format!("{}/test/concurrent:v1", proxy.address());
    let agent = TestAgent::start().await;
    let (a, b, c) = tokio::join!(
        pull(&agent, &reference),
        pull(&agent, &reference),
        pull(&agent, &reference)
    );
    assert_eq!(a.unwrap(), image.config_digest);
    assert_eq!(b.unwrap(), image.config_digest);
    assert_eq!(c.unwrap(), image.config_digest);
    // One GET per blob: the config and three layers.
    assert_eq!(proxy.blob_requests(), 4);
    let total: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.len() as u64;
    assert_eq!(agent.metric("berth_image_pull_bytes_total") as u64, total);
}

#[tokio::test]
async fn a_layer_is_unpacked_while_it_downloads() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox().push(&registry, "test/streaming", "v1");
    let proxy = FaultProxy::start(&registry.address());
    proxy.set(Fault::StallHalfway);
    let agent = TestAgent::start_with("[registry]\npull_progress_timeout_secs = 10\n").await;
    let reference = format!("{}/test/streaming:v1", proxy.address());
    let pulling = spawn_pull(&agent, reference).await;
    // Half the layer has come, the rest never does: what came is unpacked already.
    let snapshots = agent.paths.root.join("snapshots");
    let unpacked = |name: &str| {
        entries(&snapshots)
            .iter()
            .filter(|e| e.starts_with("tmp-"))
            .any(|e| snapshots.join(e).join("fs").join(name).exists())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(9);
    while !unpacked("bin") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(unpacked("bin"), "snapshots: {:?}", entries(&snapshots));
    assert!(!pulling.is_finished(), "the pull still waits for the rest");
    let err = pulling.await.unwrap().unwrap_err();
    assert!(err.message().contains("no progress for 10s"), "{err:?}");
    assert_nothing_half_stored(&agent, &image.layers[0].digest);
}

#[tokio::test]
async fn a_pulled_layer_is_kept_as_its_snapshot_only_and_a_stored_blob_is_not_downloaded() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox().push(&registry, "test/noblob", "v1");
    let proxy = FaultProxy::start(&registry.address());
    let reference = format!("{}/test/noblob:v1", proxy.address());
    let agent = TestAgent::start().await;
    let layer = image.layers[0].digest.clone();

    pull(&agent, &reference).await.unwrap();
    assert_eq!(proxy.blob_requests(), 2, "the config and the layer");
    assert!(blob_path(&agent, &image.config_digest).exists());
    assert!(
        !blob_path(&agent, &layer).exists(),
        "the layer blob is not kept"
    );
    assert!(snapshot_fs(&agent, &image, 0).join("bin/busybox").exists());

    // A layer blob in the store (an older agent kept them): unpacked from it, not downloaded.
    remove(&agent, &reference).await;
    assert!(!snapshot_fs(&agent, &image, 0).exists());
    let hex = &layer["sha256:".len()..];
    let stored = registry
        .dir()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    std::fs::copy(&stored, blob_path(&agent, &layer)).unwrap();
    pull(&agent, &reference).await.unwrap();
    assert_eq!(proxy.blob_requests(), 3, "only the config again");
    assert!(snapshot_fs(&agent, &image, 0).join("bin/busybox").exists());
}

/// After a failed pull nothing of it is stored: no ingest file, no blob, no snapshot, no record.
fn assert_nothing_half_stored(agent: &TestAgent, failing_blob: &str) {
    let root = &agent.paths.root;
    assert!(
        entries(&root.join("content/ingest")).is_empty(),
        "ingest: {:?}",
        entries(&root.join("content/ingest"))
    );
    assert!(
        !blob_path(agent, failing_blob).exists(),
        "the failing blob is not stored"
    );
    assert!(
        entries(&root.join("snapshots"))
            .iter()
            .all(|e| !e.starts_with("tmp-")),
        "no temp snapshot: {:?}",
        entries(&root.join("snapshots"))
    );
    assert!(entries(&root.join("images")).is_empty(), "no image record");
}

#[tokio::test]
async fn faulty_registry_gives_clear_errors_and_the_next_pull_succeeds() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox().push(&registry, "test/faults", "v1");
    let proxy = FaultProxy::start(&registry.address());
    let reference = format!("{}/test/faults:v1", proxy.address());
    let agent = TestAgent::start().await;
    let layer = image.layers[0].digest.clone();

    for (fault, code) in [
        (Fault::CloseMidBody, tonic::Code::Unavailable),
        (Fault::ServerError, tonic::Code::Unavailable),
    ] {
        proxy.set(fault);
        let err = pull(&agent, &reference).await.unwrap_err();
        assert_eq!(err.code(), code, "{fault:?}: {err:?}");
        assert!(
            err.message().contains("test/faults"),
            "{fault:?}: {}",
            err.message()
        );
        if fault == Fault::ServerError {
            assert!(err.message().contains("500"), "{}", err.message());
        }
        assert_nothing_half_stored(&agent, &layer);
    }

    // A wrong digest, for real: corrupt the registry's own copy of the layer.
    let data = registry
        .dir()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&layer["sha256:".len().."sha256:".len() + 2])
        .join(&layer["sha256:".len()..])
        .join("data");
    let original = std::fs::read(&data).unwrap();
    let mut corrupt = original.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    std::fs::write(&data, &corrupt).unwrap();
    proxy.set(Fault::None);
    let err = pull(&agent, &reference).await.unwrap_err();
    assert!(err.message().contains("digest"), "{err:?}");
    assert_nothing_half_stored(&agent, &layer);

    std::fs::write(&data, &original).unwrap();
    assert_eq!(pull(&agent, &reference).await.unwrap(), image.config_digest);
    assert!(agent.metric(r#"berth_image_pulls_total{outcome="error"}"#) >= 3.0);
}

#[tokio::test]
async fn a_stalled_download_fails_after_the_progress_timeout() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox().push(&registry, "test/stall", "v1");
    let proxy = FaultProxy::start(&registry.address());
    proxy.set(Fault::Stall);
    let agent = TestAgent::start_with("[registry]\npull_progress_timeout_secs = 2\n").await;
    let err = pull(&agent, &format!("{}/test/stall:v1", proxy.address()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("no progress for 2s"),
        "{}",
        err.message()
    );
    assert_nothing_half_stored(&agent, &image.layers[0].digest);
}

#[tokio::test]
async fn bad_and_missing_references_get_the_right_codes() {
    let registry = TestRegistry::start();
    let agent = TestAgent::start().await;
    let err = pull(&agent, "Not A Reference").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = pull(&agent, "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = pull(&agent, &format!("{}/no/such:image", registry.address()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert_eq!(
        agent.metric(r#"berth_image_pulls_total{outcome="not_found"}"#),
        1.0
    );
    let err = agent
        .image()
        .await
        .image_status(ImageStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn hostile_layers_never_write_outside_the_snapshot() {
    let registry = TestRegistry::start();
    let agent = TestAgent::start().await;
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();
    for kind in Hostile::ALL {
        let image =
            ImageBuilder::hostile(kind).push(&registry, &format!("hostile/{}", kind.name()), "v1");
        // Refusing the layer and confining it are both fine; escaping is not. A refusal is the
        // agent's own answer, and the agent is still there to give the next one.
        if let Err(e) = pull(&agent, &image.image_ref()).await {
            // berth's answers name it; a broken connection's status does not.
            assert!(
                e.message().starts_with("berth: "),
                "{kind:?}: the agent did not answer: {e:?}"
            );
        }
        agent
            .runtime()
            .await
            .version(VersionRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: the agent is gone: {e}"));
        let snapshots = agent.paths.root.join("snapshots");
        for chain in entries(&snapshots) {
            for name in entries(&snapshots.join(&chain)) {
                assert!(
                    name == "fs" || name == "usage.json",
                    "{kind:?} wrote {chain}/{name} beside the fs"
                );
            }
        }
        for outside in ["escape", "abs", "dev", "passwd", "evil"] {
            assert!(
                !agent.paths.root.join(outside).exists(),
                "{kind:?}: {outside} in root"
            );
            assert!(
                !snapshots.join(outside).exists(),
                "{kind:?}: {outside} in snapshots"
            );
        }
    }
    assert!(!Path::new("/abs").exists());
    assert_eq!(
        std::fs::metadata("/etc/passwd").unwrap().nlink(),
        passwd_links
    );
    if let Ok(x) = std::fs::read("/tmp/x") {
        assert_ne!(x, b"through the symlink\n");
    }
}

/// Shutdown lets an RPC in flight finish with its own answer (here a pull that ends by its
/// progress timeout) before berthd exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_pull_answer_before_exit() {
    let registry = TestRegistry::start();
    ImageBuilder::busybox().push(&registry, "test/inflight", "v1");
    let proxy = FaultProxy::start(&registry.address());
    proxy.set(Fault::Stall);
    let mut agent = TestAgent::start_with("[registry]\npull_progress_timeout_secs = 2\n").await;
    let reference = format!("{}/test/inflight:v1", proxy.address());
    let pull = spawn_pull(&agent, reference).await;
    for _ in 0..200 {
        if proxy.blob_requests() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(proxy.blob_requests() > 0, "the pull is in flight");
    let (agent, exit) = tokio::task::spawn_blocking(move || {
        let exit = agent.stop();
        (agent, exit)
    })
    .await
    .unwrap();
    let answer = pull.await.unwrap().unwrap_err();
    assert_eq!(answer.code(), tonic::Code::DeadlineExceeded, "{answer:?}");
    assert!(exit.success(), "exit {exit}: {}", agent.log());
}

/// What a layer may take from the disk is configured in `[registry]`, and a pull that would
/// pass it fails with the key named, storing nothing half-way: a disk under `min_free_bytes`,
/// a layer over `max_layer_bytes`.
#[tokio::test]
async fn a_pull_past_the_disk_limits_fails_cleanly_naming_the_limit() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox().push(&registry, "test/limits", "v1");
    for (config, key) in [
        ("min_free_bytes = 18446744073709551615", "min_free_bytes"),
        ("max_layer_bytes = 4096", "max_layer_bytes"),
    ] {
        let agent = TestAgent::start_with(&format!("[registry]\n{config}\n")).await;
        let err = pull(&agent, &image.image_ref()).await.unwrap_err();
        assert!(err.message().contains(key), "{key}: {err:?}");
        let root = &agent.paths.root;
        assert!(
            entries(&root.join("images")).is_empty(),
            "{key}: an image record"
        );
        let snapshots = entries(&agent.paths.root.join("snapshots"));
        assert!(snapshots.is_empty(), "{key}: snapshots left: {snapshots:?}");
    }
}
