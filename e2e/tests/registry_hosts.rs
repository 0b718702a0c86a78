//! `hosts.toml` (containerd's registry host configuration) end to end: mirrors in order, a
//! failing mirror passed over, `_default`, TLS with `ca` and `skip_verify`, extra headers and
//! the capability filter, against real docker-registry instances (one over HTTPS).

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_e2e::fault::{Fault, FaultProxy};
use berth_e2e::images::ImageBuilder;
use berth_e2e::registry::TestRegistry;
use berth_e2e::{TempDir, TestAgent};
use k8s_cri::v1::*;

async fn pull(agent: &TestAgent, image: &str) -> Result<String, tonic::Status> {
    agent
        .image()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// Writes `<dir>/<host>/hosts.toml`.
fn hosts_toml(dir: &Path, host: &str, text: &str) {
    std::fs::create_dir_all(dir.join(host)).unwrap();
    std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
}

fn mirror(url: &str, capabilities: &str, extra: &str) -> String {
    format!("[host.\"{url}\"]\n  capabilities = [{capabilities}]\n{extra}\n")
}

const PULL_RESOLVE: &str = "\"pull\", \"resolve\"";

#[tokio::test]
async fn hosts_toml_mirrors_are_tried_in_order_with_fallback() {
    let registry = TestRegistry::start();
    // Images as a docker.io / registry.k8s.io mirror holds them: the path kept, the host dropped.
    let hub = ImageBuilder::busybox().push(&registry, "library/busybox", "1.36");
    let k8s = ImageBuilder::busybox()
        .label("pause", "yes")
        .push(&registry, "pause", "3.9");
    let certs = TempDir::new("berth-e2e-certs");
    let dead = format!("http://127.0.0.1:{}", berth_e2e::free_port());
    let live = format!("http://{}", registry.address());
    hosts_toml(
        certs.path(),
        "docker.io",
        &format!(
            "server = \"https://registry-1.docker.invalid\"\n\n{}{}",
            mirror(&dead, PULL_RESOLVE, ""),
            mirror(&live, PULL_RESOLVE, "")
        ),
    );
    hosts_toml(
        certs.path(),
        "registry.k8s.io",
        &format!("server = \"{live}\"\n{}", mirror(&live, PULL_RESOLVE, "")),
    );
    let agent =
        TestAgent::start_with(&format!("[registry]\nconfig_path = {:?}\n", certs.path())).await;
    assert_eq!(
        pull(&agent, "busybox:1.36").await.unwrap(),
        hub.config_digest
    );
    assert_eq!(
        pull(&agent, "registry.k8s.io/pause:3.9").await.unwrap(),
        k8s.config_digest
    );
    // No mirror has it and the server does not exist: a clear error, not a hang.
    let err = pull(&agent, "busybox:missing").await.unwrap_err();
    assert!(err.message().contains("busybox:missing"), "{err:?}");
}

#[tokio::test]
async fn the_first_live_mirror_wins_and_a_500_from_it_falls_through_to_the_next() {
    // Two live mirrors holding different images under one name: the first listed is pulled
    // (listed the other way round, the other would be).
    let first = TestRegistry::start();
    let second = TestRegistry::start();
    let a = ImageBuilder::busybox()
        .label("mirror", "first")
        .push(&first, "library/app", "1");
    let b = ImageBuilder::busybox()
        .label("mirror", "second")
        .push(&second, "library/app", "1");
    assert_ne!(a.config_digest, b.config_digest);
    // One image both hold, for the 500 case: the first mirror answers its blobs with 500.
    let both = ImageBuilder::busybox().label("both", "yes");
    let shared = both.push(&first, "library/shared", "1");
    both.push(&second, "library/shared", "1");
    let failing = FaultProxy::start(&first.address());
    failing.set(Fault::ServerError);
    let certs = TempDir::new("berth-e2e-certs");
    let url = |r: &TestRegistry| format!("http://{}", r.address());
    hosts_toml(
        certs.path(),
        "docker.io",
        &format!(
            "server = \"https://registry-1.docker.invalid\"\n{}{}",
            mirror(&url(&first), PULL_RESOLVE, ""),
            mirror(&url(&second), PULL_RESOLVE, "")
        ),
    );
    hosts_toml(
        certs.path(),
        "quay.io",
        &format!(
            "server = \"https://quay.invalid\"\n{}{}",
            mirror(&format!("http://{}", failing.address()), PULL_RESOLVE, ""),
            mirror(&url(&second), PULL_RESOLVE, "")
        ),
    );
    let agent =
        TestAgent::start_with(&format!("[registry]\nconfig_path = {:?}\n", certs.path())).await;
    assert_eq!(
        pull(&agent, "docker.io/library/app:1").await.unwrap(),
        a.config_digest
    );
    assert_eq!(
        pull(&agent, "quay.io/library/shared:1").await.unwrap(),
        shared.config_digest
    );
    assert!(
        failing.blob_requests() >= 1,
        "the first mirror was asked (and answered 500) before the fallback"
    );
}

/// A CA and a certificate it signed for 127.0.0.1, made with openssl: (ca, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name);
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |path: PathBuf| path.display().to_string();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=berth-test-ca",
        "-keyout",
        &s(p("ca.key")),
        "-out",
        &s(p("ca.pem")),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &s(p("key.pem")),
        "-out",
        &s(p("leaf.csr")),
    ]);
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        &s(p("leaf.csr")),
        "-CA",
        &s(p("ca.pem")),
        "-CAkey",
        &s(p("ca.key")),
        "-CAcreateserial",
        "-extfile",
        &s(p("leaf.ext")),
        "-out",
        &s(p("cert.pem")),
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[tokio::test]
async fn default_hosts_tls_ca_skip_verify_headers_and_capabilities() {
    let registry = TestRegistry::start();
    let image = ImageBuilder::busybox()
        .label("tls", "yes")
        .push(&registry, "test/img", "v1");
    let keys = TempDir::new("berth-e2e-tls");
    let (ca, cert, key) = certificates(keys.path());
    let tls = registry.tls_twin(&cert, &key);
    let https = format!("https://{}", tls.address);
    // Another registry with another image under the same name, behind a recording proxy.
    let other = TestRegistry::start();
    let decoy = ImageBuilder::busybox()
        .label("decoy", "yes")
        .push(&other, "test/img", "v1");
    let pull_only = FaultProxy::start(&other.address());
    let recording = FaultProxy::start(&registry.address());
    let certs = TempDir::new("berth-e2e-certs");
    let ca_line = format!("  ca = {:?}", ca.display().to_string());
    // Any registry without a directory of its own: _default, with the CA.
    hosts_toml(
        certs.path(),
        "_default",
        &mirror(&https, PULL_RESOLVE, &ca_line),
    );
    hosts_toml(
        certs.path(),
        "noca.invalid",
        &mirror(&https, PULL_RESOLVE, ""),
    );
    hosts_toml(
        certs.path(),
        "skip.invalid",
        &mirror(&https, PULL_RESOLVE, "  skip_verify = true"),
    );
    hosts_toml(
        certs.path(),
        "headers.invalid",
        &mirror(
            &format!("http://{}", recording.address()),
            PULL_RESOLVE,
            &format!(
                "  [host.\"http://{}\".header]\n    x-berth-test = \"mirror-a\"",
                recording.address()
            ),
        ),
    );
    // A pull-only mirror is never asked to resolve a tag: the next host resolves it.
    hosts_toml(
        certs.path(),
        "caps.invalid",
        &format!(
            "{}{}",
            mirror(&format!("http://{}", pull_only.address()), "\"pull\"", ""),
            mirror(&format!("http://{}", registry.address()), PULL_RESOLVE, "")
        ),
    );
    let agent =
        TestAgent::start_with(&format!("[registry]\nconfig_path = {:?}\n", certs.path())).await;

    assert_eq!(
        pull(&agent, "anything.invalid/test/img:v1").await.unwrap(),
        image.config_digest,
        "_default/hosts.toml with the CA"
    );
    let err = pull(&agent, "noca.invalid/test/img:v1").await.unwrap_err();
    assert!(
        err.message().to_lowercase().contains("certificate"),
        "without the CA the TLS handshake fails: {err:?}"
    );
    assert_eq!(
        pull(&agent, "skip.invalid/test/img:v1").await.unwrap(),
        image.config_digest
    );
    assert_eq!(
        pull(&agent, "headers.invalid/test/img:v1").await.unwrap(),
        image.config_digest
    );
    let heads = recording.requests();
    assert!(!heads.is_empty());
    assert!(
        heads
            .iter()
            .all(|h| h.to_lowercase().contains("x-berth-test: mirror-a")),
        "every request carries the header: {heads:?}"
    );
    assert_eq!(
        pull(&agent, "caps.invalid/test/img:v1").await.unwrap(),
        image.config_digest,
        "resolved by the resolve-capable host, not the decoy's pull-only mirror"
    );
    assert_ne!(decoy.config_digest, image.config_digest);
    assert!(
        pull_only
            .requests()
            .iter()
            .all(|h| !h.contains("/manifests/v1")),
        "the pull-only mirror was asked to resolve a tag: {:?}",
        pull_only.requests()
    );
}

/// A `ca` file replaced in place (a rotated registry CA) is read again after SIGHUP
/// (`systemctl reload berthd`): before it, the TLS client built from the old file is reused.
#[tokio::test]
async fn a_ca_file_replaced_in_place_is_used_after_sighup() {
    let registry = TestRegistry::start();
    let image =
        ImageBuilder::busybox()
            .label("rotated", "yes")
            .push(&registry, "test/rotated", "v1");
    let right = TempDir::new("berth-e2e-tls");
    let (right_ca, cert, key) = certificates(right.path());
    let wrong = TempDir::new("berth-e2e-tls");
    let (wrong_ca, _, _) = certificates(wrong.path());
    let tls = registry.tls_twin(&cert, &key);
    let certs = TempDir::new("berth-e2e-certs");
    let ca = certs.path().join("registry-ca.pem");
    std::fs::copy(&wrong_ca, &ca).unwrap();
    hosts_toml(
        certs.path(),
        "rotated.invalid",
        &mirror(
            &format!("https://{}", tls.address),
            PULL_RESOLVE,
            &format!("  ca = {:?}", ca.display().to_string()),
        ),
    );
    let agent =
        TestAgent::start_with(&format!("[registry]\nconfig_path = {:?}\n", certs.path())).await;
    let reference = "rotated.invalid/test/rotated:v1";
    let err = pull(&agent, reference).await.unwrap_err();
    assert!(
        err.message().to_lowercase().contains("certificate"),
        "{err:?}"
    );

    std::fs::copy(&right_ca, &ca).unwrap();
    let err = pull(&agent, reference).await.unwrap_err();
    assert!(
        err.message().to_lowercase().contains("certificate"),
        "the client built from the old CA is kept until SIGHUP: {err:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while agent.metric("berth_config_reloads_total{outcome=\"success\"}") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no reload counted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(pull(&agent, reference).await.unwrap(), image.config_digest);
}
