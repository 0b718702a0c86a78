//! The test registry and image builders themselves: every image kind pushes and reads back with
//! matching digests, token auth works the way distribution and the token spec say, and fixtures
//! leave no process or directory behind.

use std::io::Read as _;

use berth_e2e::images::*;
use berth_e2e::registry::{
    basic_auth, bearer_challenge, http_request, percent_encode, sha256_digest, TestRegistry,
    MANIFEST_ACCEPT, TOKEN_SERVICE,
};
use serde_json::Value;

/// Reads `image` back by tag and by digest and checks every digest, media type and diff_id.
fn assert_readable(registry: &TestRegistry, image: &PushedImage) {
    let (media_type, manifest) = registry.get_manifest(&image.repo, &image.reference);
    assert_eq!(media_type, image.media_type);
    assert_eq!(sha256_digest(&manifest), image.manifest_digest);
    assert_eq!(manifest.len() as u64, image.size);
    let (_, by_digest) = registry.get_manifest(&image.repo, &image.manifest_digest);
    assert_eq!(by_digest, manifest);

    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["mediaType"], image.media_type.as_str());
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    let config = registry.get_blob(&image.repo, &image.config_digest);
    assert_eq!(sha256_digest(&config), image.config_digest);
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["architecture"], image.platform.architecture.as_str());
    assert_eq!(config["os"], "linux");
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, image.diff_ids);

    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), image.layers.len());
    for (listed, pushed) in layers.iter().zip(&image.layers) {
        assert_eq!(listed["digest"], pushed.digest.as_str());
        assert_eq!(listed["mediaType"], pushed.media_type.as_str());
        let blob = registry.get_blob(&image.repo, &pushed.digest);
        assert_eq!(sha256_digest(&blob), pushed.digest);
        assert_eq!(blob.len() as u64, pushed.size);
        assert_eq!(
            sha256_digest(&decompress(&pushed.media_type, &blob)),
            pushed.diff_id
        );
    }
}

fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("gzip") {
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap();
    } else if media_type.ends_with("zstd") {
        out = zstd::decode_all(blob).unwrap();
    } else {
        out = blob.to_vec();
    }
    out
}

/// (path, entry type, link target) of every entry of a layer tar.
fn tar_listing(tar: &[u8]) -> Vec<(String, tar::EntryType, String)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            (path, e.header().entry_type(), link)
        })
        .collect()
}

fn config_of(image: &PushedImage) -> Value {
    serde_json::from_slice(&image.config).unwrap()
}

#[test]
fn plain_registry_serves_every_image_kind() {
    let registry = TestRegistry::start();
    assert!(registry.address().starts_with("127.0.0.1:"));

    let single = ImageBuilder::busybox().push(&registry, "test/busybox", "latest");
    assert_readable(&registry, &single);
    assert_eq!(single.layers.len(), 1);
    assert_eq!(single.layers[0].media_type, OCI_LAYER_GZIP);
    let rootfs = Layer::busybox().uncompressed();
    let listing = tar_listing(&rootfs);
    assert!(listing.contains(&("bin/sh".into(), tar::EntryType::Symlink, "busybox".into())));
    assert!(listing
        .iter()
        .any(|(p, t, _)| p == "bin/busybox" && t.is_file()));
    assert_eq!(
        config_of(&single)["config"]["Cmd"],
        serde_json::json!(["sh"])
    );

    let multi = ImageBuilder::multi_layer().push(&registry, "test/multi", "v1");
    assert_readable(&registry, &multi);
    assert_eq!(multi.layers.len(), 3);
    assert_eq!(
        multi.layers[0].digest, single.layers[0].digest,
        "same base layer"
    );

    let whiteouts = ImageBuilder::whiteouts().push(&registry, "test/whiteouts", "v1");
    assert_readable(&registry, &whiteouts);
    let upper = registry.get_blob("test/whiteouts", &whiteouts.layers[2].digest);
    let names: Vec<String> = tar_listing(&decompress(OCI_LAYER_GZIP, &upper))
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    assert!(
        names.contains(&"etc/.wh.removed.txt".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"opaque/.wh..wh..opq".to_string()),
        "{names:?}"
    );

    let numeric = ImageBuilder::busybox()
        .user("1000")
        .working_dir("/tmp")
        .stop_signal("SIGUSR1")
        .entrypoint(["/bin/sh", "-c"])
        .env("GREETING=hi")
        .push(&registry, "test/user", "numeric");
    assert_readable(&registry, &numeric);
    let config = config_of(&numeric)["config"].clone();
    assert_eq!(config["User"], "1000");
    assert_eq!(config["WorkingDir"], "/tmp");
    assert_eq!(config["StopSignal"], "SIGUSR1");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(config["Env"][1], "GREETING=hi");
    let named = ImageBuilder::with_passwd()
        .user("nobody")
        .push(&registry, "test/user", "named");
    assert_readable(&registry, &named);
    assert_eq!(config_of(&named)["config"]["User"], "nobody");

    for (compression, media_type) in [
        (Compression::Gzip, OCI_LAYER_GZIP),
        (Compression::Zstd, OCI_LAYER_ZSTD),
        (Compression::None, OCI_LAYER),
    ] {
        let image = ImageBuilder::multi_layer().compression(compression).push(
            &registry,
            "test/compression",
            &format!("{compression:?}").to_lowercase(),
        );
        assert_readable(&registry, &image);
        assert!(image.layers.iter().all(|l| l.media_type == media_type));
        assert_eq!(
            image.diff_ids, multi.diff_ids,
            "same content, same diff_ids"
        );
    }

    let docker = ImageBuilder::busybox()
        .docker()
        .push(&registry, "test/docker", "v1");
    assert_readable(&registry, &docker);
    assert_eq!(docker.media_type, DOCKER_MANIFEST);
    assert_eq!(docker.layers[0].media_type, DOCKER_LAYER_GZIP);

    for kind in Hostile::ALL {
        let image = ImageBuilder::hostile(kind).push(&registry, "test/hostile", kind.name());
        assert_readable(&registry, &image);
    }
    let symlink = Hostile::SymlinkEscape.layer().uncompressed();
    assert_eq!(
        tar_listing(&symlink),
        [
            ("evil".into(), tar::EntryType::Symlink, "/".into()),
            ("evil/tmp/x".into(), tar::EntryType::Regular, String::new()),
        ]
    );
    let raw = b"not a tar at all".to_vec();
    let arbitrary = ImageBuilder::busybox()
        .layer(Layer::blob(raw.clone(), OCI_LAYER, &sha256_digest(&raw)))
        .push(&registry, "test/arbitrary", "v1");
    assert_eq!(
        registry.get_blob("test/arbitrary", &arbitrary.layers[1].digest),
        raw
    );
}

#[test]
fn indexes_list_platforms_in_order_and_only_the_host_runs_busybox() {
    let registry = TestRegistry::start();
    for (index, media_type, child_type) in [
        (IndexBuilder::multi_platform(), OCI_INDEX, OCI_MANIFEST),
        (
            IndexBuilder::multi_platform().docker(),
            DOCKER_MANIFEST_LIST,
            DOCKER_MANIFEST,
        ),
    ] {
        let pushed = index.push(&registry, "test/index", "multi");
        let (got_type, bytes) = registry.get_manifest("test/index", "multi");
        assert_eq!(got_type, media_type);
        assert_eq!(sha256_digest(&bytes), pushed.digest);
        let index: Value = serde_json::from_slice(&bytes).unwrap();
        let platforms: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["mediaType"], child_type);
                let p = &m["platform"];
                let variant = p["variant"]
                    .as_str()
                    .map(|v| format!("/{v}"))
                    .unwrap_or_default();
                format!(
                    "{}/{}{variant}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(platforms, ["linux/arm64/v8", "linux/amd64", "linux/arm/v7"]);
        for image in &pushed.images {
            assert_readable(&registry, image);
        }
        let host = pushed
            .image_for(&Platform::host())
            .expect("host platform listed");
        let busybox = ImageBuilder::busybox().build();
        assert_eq!(
            host.diff_ids,
            busybox
                .layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect::<Vec<_>>()
        );
        let others: Vec<&PushedImage> = pushed
            .images
            .iter()
            .filter(|i| i.platform != Platform::host())
            .collect();
        assert_eq!(others.len(), 2);
        assert!(
            others.iter().all(|i| i.layers[0].size < 1024),
            "dummies are small"
        );
    }
}

#[test]
fn large_image_is_about_50_mib_of_incompressible_layers() {
    let registry = TestRegistry::start();
    let first = ImageBuilder::large().build();
    let again = ImageBuilder::large().build();
    assert_eq!(
        first.manifest_digest, again.manifest_digest,
        "deterministic"
    );
    assert_eq!(first.layers.len(), LARGE_LAYERS);
    let total: u64 = first.layers.iter().map(|l| l.size).sum();
    assert!(total >= LARGE_BYTES as u64, "incompressible: {total} bytes");
    assert!(
        total < LARGE_BYTES as u64 + 4 * 1024 * 1024,
        "{total} bytes"
    );
    let pushed = first.push(&registry, "test/large", "v1");
    assert_readable(&registry, &pushed);
}

#[test]
fn token_registry_demands_bearer_tokens_from_its_token_server() {
    let registry =
        TestRegistry::start_with_token_auth(&[("alice", "wonderland"), ("bob", "builder")]);
    let image = ImageBuilder::multi_layer().push(&registry, "private/app", "v1");
    assert!(
        registry.token_requests() > 0,
        "the fixture's pushes used the token server"
    );
    assert_readable(&registry, &image);

    // Anonymous: 401 with a Bearer challenge naming realm, service and scope.
    let address = registry.address();
    let manifest_path = "/v2/private/app/manifests/v1";
    let anonymous = http_request(
        &address,
        "GET",
        manifest_path,
        &[("Accept", MANIFEST_ACCEPT)],
        b"",
    )
    .unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.describe());
    let challenge = anonymous
        .header("www-authenticate")
        .expect("WWW-Authenticate");
    let params = bearer_challenge(challenge).unwrap_or_else(|| panic!("not Bearer: {challenge}"));
    assert_eq!(params["realm"], registry.realm().unwrap());
    assert_eq!(params["service"], TOKEN_SERVICE);
    assert_eq!(params["scope"], "repository:private/app:pull");

    // The token server wants credentials too.
    let (token_address, token_path) = params["realm"]
        .strip_prefix("http://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let token_target = format!(
        "/{token_path}?service={}&scope={}",
        percent_encode(&params["service"]),
        percent_encode(&params["scope"])
    );
    let before = registry.token_requests();
    let no_credentials = http_request(token_address, "GET", &token_target, &[], b"").unwrap();
    assert_eq!(no_credentials.status, 401);
    let wrong = basic_auth("bob", "wrong");
    let wrong = http_request(
        token_address,
        "GET",
        &token_target,
        &[("Authorization", &wrong)],
        b"",
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(registry.token_requests(), before + 2);

    // Bearer flow by hand, as bob.
    let bob = basic_auth("bob", "builder");
    let answer = http_request(
        token_address,
        "GET",
        &token_target,
        &[("Authorization", &bob)],
        b"",
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.describe());
    let answer: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(answer["token"], answer["access_token"]);
    assert_eq!(answer["expires_in"], 300);
    let bearer = format!("Bearer {}", answer["token"].as_str().unwrap());
    let with_token = [
        ("Accept", MANIFEST_ACCEPT),
        ("Authorization", bearer.as_str()),
    ];
    let manifest = http_request(&address, "GET", manifest_path, &with_token, b"").unwrap();
    assert_eq!(
        manifest.status,
        200,
        "{}\n{}",
        manifest.describe(),
        registry.log()
    );
    assert_eq!(sha256_digest(&manifest.body), image.manifest_digest);
    let blob_path = format!("/v2/private/app/blobs/{}", image.layers[1].digest);
    let blob = http_request(
        &address,
        "GET",
        &blob_path,
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .unwrap();
    assert_eq!(blob.status, 200);
    assert_eq!(sha256_digest(&blob.body), image.layers[1].digest);

    // A pull token does not allow pushing, and a token for one repository not another.
    let upload = http_request(
        &address,
        "POST",
        "/v2/private/app/blobs/uploads/",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .unwrap();
    assert_eq!(upload.status, 401);
    let other = http_request(
        &address,
        "GET",
        "/v2/private/other/tags/list",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .unwrap();
    assert_eq!(other.status, 401);
}

#[test]
fn token_server_supports_oauth2_password_and_refresh_grants() {
    let registry = TestRegistry::start_with_token_auth(&[("alice", "wonderland")]);
    let image = ImageBuilder::busybox().push(&registry, "private/oauth", "v1");
    let realm = registry.realm().unwrap();
    let (token_address, token_path) = realm
        .strip_prefix("http://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let token_path = format!("/{token_path}");
    let post = |form: &str| {
        http_request(
            token_address,
            "POST",
            &token_path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
        .unwrap()
    };
    let scope = percent_encode("repository:private/oauth:pull");
    let base = format!("service={TOKEN_SERVICE}&scope={scope}&client_id=berth-e2e");

    let bad = post(&format!(
        "grant_type=password&username=alice&password=nope&{base}"
    ));
    assert_eq!(bad.status, 401);
    let unknown = post(&format!(
        "grant_type=refresh_token&refresh_token=made-up&{base}"
    ));
    assert_eq!(unknown.status, 401);
    let unsupported = post(&format!("grant_type=client_credentials&{base}"));
    assert_eq!(unsupported.status, 400);

    let granted = post(&format!(
        "grant_type=password&username=alice&password=wonderland&{base}"
    ));
    assert_eq!(granted.status, 200, "{}", granted.describe());
    let granted: Value = serde_json::from_slice(&granted.body).unwrap();
    let refresh = granted["refresh_token"].as_str().unwrap().to_string();
    let refreshed = post(&format!(
        "grant_type=refresh_token&refresh_token={refresh}&{base}"
    ));
    assert_eq!(refreshed.status, 200, "{}", refreshed.describe());
    let refreshed: Value = serde_json::from_slice(&refreshed.body).unwrap();
    assert_eq!(refreshed["refresh_token"], refresh.as_str());

    for answer in [granted, refreshed] {
        let bearer = format!("Bearer {}", answer["access_token"].as_str().unwrap());
        let get = http_request(
            &registry.address(),
            "GET",
            "/v2/private/oauth/manifests/v1",
            &[("Accept", MANIFEST_ACCEPT), ("Authorization", &bearer)],
            b"",
        )
        .unwrap();
        assert_eq!(get.status, 200, "{}", get.describe());
        assert_eq!(sha256_digest(&get.body), image.manifest_digest);
    }
}

#[test]
fn registries_leave_no_process_or_directory_behind() {
    let plain = TestRegistry::start();
    let token = TestRegistry::start_with_token_auth(&[("alice", "wonderland")]);
    assert_ne!(plain.address(), token.address());
    let gone: Vec<(u32, std::path::PathBuf)> = [plain, token]
        .into_iter()
        .map(|r| (r.pid(), r.dir().to_path_buf()))
        .collect();
    for (pid, dir) in gone {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "registry {pid} still runs"
        );
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
}

#[test]
fn busybox_layers_unpack_with_gnu_tar_and_run() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::{Command, Stdio};

    let dir = berth_e2e::TempDir::new("berth-unpack");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let image = ImageBuilder::multi_layer().build();
    for layer in &image.layers {
        let mut tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&rootfs)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let tar_bytes = decompress(&layer.media_type, &layer.bytes);
        std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &tar_bytes).unwrap();
        drop(tar.stdin.take());
        assert!(tar.wait().unwrap().success());
    }
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "layer 3\n"
    );
    let tmp = std::fs::metadata(rootfs.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    let out = Command::new(rootfs.join("bin/sh"))
        .args(["-c", "echo ok"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}
