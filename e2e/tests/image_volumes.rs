//! Image volumes (`Mount.image`, the OCI volume source): a pulled image mounted read-only into a
//! container, from an overlay of its layers or a bind of its only layer; its binaries run; the
//! status names the image; it is leased like a rootfs, so RemoveImage cannot take it from a
//! running container; a writable one or an image not pulled is refused; nothing stays mounted
//! once the container is gone. `image_sub_path` mounts only that path of the image, resolved
//! inside it.

use berth_e2e::container_fixture::*;
use berth_e2e::images::{Entry, ImageBuilder, Layer};
use bytes::{Buf, BufMut, Bytes};
use k8s_cri::v1::*;
use prost::Message;

fn volume(container_path: &str, image: &str, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.into(),
        readonly,
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn image_volumes_are_read_only_leased_and_unmounted_with_their_container() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    // Busybox plus a layer (an overlay of two), and an image of one layer (a bind).
    let layered = push_and_pull(
        &f,
        ImageBuilder::busybox().layer(Layer::files(&[("marker", b"from-the-volume\n", 0o644)])),
        "test/vol-layered",
    )
    .await;
    let single = push_and_pull(
        &f,
        ImageBuilder::new().layer(Layer::files(&[("only", b"one layer\n", 0o644)])),
        "test/vol-single",
    )
    .await;
    let pod_cfg = pod_config(&f, "imgvol");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let script =
        "cat /mnt/vol/marker /mnt/one/only; touch /mnt/vol/x 2>&1; touch /mnt/one/y 2>&1; \
        /mnt/vol/bin/ls /mnt/vol >/dev/null && echo exec-ok; echo done; sleep 1000";
    let mut cfg = container_config(&f, "reader", &["sh", "-c", script]);
    cfg.mounts = vec![
        volume("/mnt/vol", &layered, true),
        volume("/mnt/one", &single, true),
    ];
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let s = status(&mut c, &id).await;
    let log = wait_for_text(&s.log_path, "the script's end", |l| l.contains("done")).await;
    assert!(
        log.contains("from-the-volume") && log.contains("one layer"),
        "{log}"
    );
    assert_eq!(log.matches("Read-only file system").count(), 2, "{log}");
    assert!(log.contains("exec-ok"), "{log}");
    let named: Vec<String> = s
        .mounts
        .iter()
        .filter_map(|m| m.image.as_ref().map(|i| i.image.clone()))
        .collect();
    assert_eq!(named, vec![layered.clone(), single.clone()]);

    // The image goes from the store, not from under the running container.
    f.agent
        .image()
        .await
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: layered.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let out = exec_sync(&mut c, &id, &["cat", "/mnt/vol/marker"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-the-volume\n");
    // Its snapshots are still on disk (leased by the container).
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            f.agent
                .paths
                .state
                .join("containers")
                .join(&id)
                .join("container.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let volume_layers = record["volume_layers"].as_array().unwrap();
    assert_eq!(
        volume_layers.len(),
        3,
        "busybox, the marker layer, the single layer"
    );
    for layer in volume_layers {
        let path = std::path::Path::new(layer.as_str().unwrap());
        assert!(path.is_dir(), "{} went with the image", path.display());
    }

    // Writable, or not pulled: refused, nothing made.
    for (mount, code) in [
        (
            volume("/mnt/w", &single, false),
            tonic::Code::InvalidArgument,
        ),
        (
            volume(
                "/mnt/n",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                true,
            ),
            tonic::Code::NotFound,
        ),
    ] {
        let mut cfg = container_config(&f, "refused", &["true"]);
        cfg.mounts = vec![mount];
        let err = create_refused(&mut c, &pod, cfg, pod_cfg.clone()).await;
        assert_eq!(err.code(), code, "{err:?}");
    }
    stop_and_remove(&mut c, &id).await;
    let left = berth_e2e::network::mounts_under(f.agent.dir());
    assert!(
        !left.iter().any(|m| m.contains("volumes")),
        "image volumes still mounted: {left:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "imgvol");
}

/// A codec that sends and returns message bytes as they are: the request below carries a CRI
/// field (`Mount.image_sub_path`, tag 10) that the k8s-cri bindings cannot encode.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

/// A length-delimited field `tag` holding `bytes`.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// CreateContainer as a client of a newer CRI sends it: each mount of `config` with its
/// `image_sub_path` ("" for none) appended as tag 10. A message's bytes are its fields in any
/// order, so the bindings' encoding plus the field is the newer message.
async fn create_with_sub_paths(
    f: &Fixture,
    pod: &str,
    mut config: ContainerConfig,
    pod_config: PodSandboxConfig,
    sub_paths: &[&str],
) -> Result<String, tonic::Status> {
    let mounts = std::mem::take(&mut config.mounts);
    let mut config_bytes = config.encode_to_vec();
    for (mount, sub_path) in mounts.iter().zip(sub_paths) {
        let mut bytes = mount.encode_to_vec();
        if !sub_path.is_empty() {
            bytes.extend(field(10, sub_path.as_bytes()));
        }
        config_bytes.extend(field(7, &bytes));
    }
    let mut request = CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: None,
        sandbox_config: Some(pod_config),
    }
    .encode_to_vec();
    request.extend(field(2, &config_bytes));
    let response = raw_call(f, "/runtime.v1.RuntimeService/CreateContainer", request).await?;
    Ok(CreateContainerResponse::decode(response)
        .unwrap()
        .container_id)
}

/// One RPC of the runtime service with `request`'s bytes as they are; the answer's bytes.
async fn raw_call(
    f: &Fixture,
    method: &'static str,
    request: Vec<u8>,
) -> Result<Bytes, tonic::Status> {
    let channel = berth_e2e::connect(&f.agent.paths.socket).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(Bytes::from(request)), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// What a newer CRI client reads of ContainerStatus's image volumes: `ImageSpec.image_ref`
/// (tag 20) and `Mount.image_sub_path` (tag 10), which the k8s-cri bindings lack.
#[derive(Clone, PartialEq, prost::Message)]
struct NewerStatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<NewerStatus>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct NewerStatus {
    #[prost(message, repeated, tag = "14")]
    mounts: Vec<NewerMount>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct NewerMount {
    #[prost(string, tag = "1")]
    container_path: String,
    #[prost(message, optional, tag = "9")]
    image: Option<NewerImageSpec>,
    #[prost(string, tag = "10")]
    image_sub_path: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct NewerImageSpec {
    #[prost(string, tag = "1")]
    image: String,
    #[prost(string, tag = "20")]
    image_ref: String,
}

#[tokio::test]
async fn an_image_sub_path_is_mounted_alone_and_resolved_inside_the_image() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    // data/sub holds a file; data/escape is an absolute symlink to "/", which must mean the
    // image's root, never the host's.
    let image = push_and_pull(
        &f,
        ImageBuilder::busybox().layer(
            Layer::files(&[("data/sub/file", b"in-the-sub-path\n", 0o644)])
                .entry(Entry::symlink("data/escape", "/")),
        ),
        "test/vol-subpath",
    )
    .await;
    let pod_cfg = pod_config(&f, "subpath");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let script = "cat /mnt/sub/file; ls /mnt/sub/data 2>&1; cat /mnt/esc/data/sub/file; \
        echo done; sleep 1000";
    let mut cfg = container_config(&f, "reader", &["sh", "-c", script]);
    cfg.mounts = vec![
        volume("/mnt/sub", &image, true),
        volume("/mnt/esc", &image, true),
    ];
    let id = create_with_sub_paths(&f, &pod, cfg, pod_cfg.clone(), &["data/sub", "data/escape"])
        .await
        .unwrap();
    start(&mut c, &id).await;
    let s = status(&mut c, &id).await;
    let log = wait_for_text(&s.log_path, "the script's end", |l| l.contains("done")).await;
    assert_eq!(log.matches("in-the-sub-path").count(), 2, "{log}");
    assert!(
        log.contains("No such file or directory"),
        "only the sub path: {log}"
    );

    // ContainerStatus names each volume's image by id and its sub path, in the newer fields;
    // the bindings still read their own.
    let request = ContainerStatusRequest {
        container_id: id.clone(),
        verbose: false,
    }
    .encode_to_vec();
    let answer = raw_call(&f, "/runtime.v1.RuntimeService/ContainerStatus", request)
        .await
        .unwrap();
    let newer = NewerStatusResponse::decode(answer.clone()).unwrap();
    let reported: Vec<(String, String, String, String)> = newer
        .status
        .unwrap()
        .mounts
        .into_iter()
        .filter_map(|m| {
            let image = m.image?;
            Some((
                m.container_path,
                image.image,
                image.image_ref,
                m.image_sub_path,
            ))
        })
        .collect();
    let expected = [("/mnt/sub", "data/sub"), ("/mnt/esc", "data/escape")].map(|(path, sub)| {
        (
            path.to_string(),
            image.clone(),
            image.clone(),
            sub.to_string(),
        )
    });
    assert_eq!(reported, expected);
    let bindings = ContainerStatusResponse::decode(answer)
        .unwrap()
        .status
        .unwrap();
    assert_eq!(bindings.id, id);
    assert_eq!(bindings.mounts.len(), 2);

    // Refused, with nothing made: a sub path the image lacks, one that climbs out, and one on
    // a mount that is not an image volume.
    let mut host = container_config(&f, "refused", &["true"]);
    host.mounts = vec![Mount {
        container_path: "/mnt/host".into(),
        host_path: f.logs.path().display().to_string(),
        ..Default::default()
    }];
    for (cfg, sub_path, message) in [
        (None, "missing", "does not exist in the image"),
        (None, "../data", "must be relative"),
        (Some(host), "data", "only for an image volume"),
    ] {
        let cfg = cfg.unwrap_or_else(|| {
            let mut cfg = container_config(&f, "refused", &["true"]);
            cfg.mounts = vec![volume("/mnt/sub", &image, true)];
            cfg
        });
        let err = create_with_sub_paths(&f, &pod, cfg, pod_cfg.clone(), &[sub_path])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{sub_path}: {err:?}"
        );
        assert!(err.message().contains(message), "{sub_path}: {err:?}");
    }
    stop_and_remove(&mut c, &id).await;
    let left = berth_e2e::network::mounts_under(f.agent.dir());
    assert!(
        !left.iter().any(|m| m.contains("volumes")),
        "image volumes still mounted: {left:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "subpath");
}
