//! Image volumes (`Mount.image`, the OCI volume source): a pulled image mounted read-only into a
//! container, from an overlay of its layers or a bind of its only layer; its binaries run; the
//! status names the image; it is leased like a rootfs, so RemoveImage cannot take it from a
//! running container; a writable one or an image not pulled is refused; nothing stays mounted
//! once the container is gone.

use berth_e2e::container_fixture::*;
use berth_e2e::images::{ImageBuilder, Layer};
use k8s_cri::v1::*;

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
    c.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    c.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let left = berth_e2e::network::mounts_under(f.agent.dir());
    assert!(
        !left.iter().any(|m| m.contains("volumes")),
        "image volumes still mounted: {left:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "imgvol");
}
