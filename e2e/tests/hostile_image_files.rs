//! CreateContainer reads the image's /etc/passwd and /etc/group to resolve users and groups.
//! An image controls what those paths are: a symlink out of the rootfs must resolve inside it
//! (never to the host's /etc/shadow), and a FIFO, a device node or a huge file must be refused
//! with a clear error, not hang a thread or read until the agent runs out of memory. The agent
//! stays up and serves the next request.

use berth_e2e::container_fixture::*;
use berth_e2e::images::{Entry, ImageBuilder, Layer};
use k8s_cri::v1::*;

#[tokio::test]
async fn image_user_files_are_read_inside_the_rootfs_and_only_when_regular_and_small() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "hostile-etc");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let create_as = |image: String, user: &'static str| {
        let mut cfg = container_config(&f, "who", &["id", "-u"]);
        cfg.image = Some(ImageSpec {
            image,
            ..Default::default()
        });
        run_as(&mut cfg, user);
        CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        }
    };

    // /etc/passwd -> /etc/shadow: the image has no shadow file, so there is no passwd and no
    // user "root" (read through the host, the host's shadow would have made root's uid its
    // last-change day).
    let shadow = ImageBuilder::busybox()
        .layer(Layer::new().entry(Entry::symlink("etc/passwd", "/etc/shadow")));
    let image = push_and_pull(&f, shadow, "test/passwd-to-shadow").await;
    let err = c
        .create_container(create_as(image, "root"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("\"root\" not found"),
        "{}",
        err.message()
    );

    // /etc/group as a FIFO (a read would wait for a writer forever), as a device node
    // (1:5, a read of /dev/zero never ends), or as 9 MiB: refused, naming the file.
    let big = vec![b'#'; 9 << 20];
    for (name, layer, why) in [
        (
            "group-fifo",
            Layer::new().entry(Entry::fifo("etc/group")),
            "not a regular file",
        ),
        (
            "group-zero",
            Layer::new().entry(Entry::char_device("etc/group", 1, 5)),
            "not a regular file",
        ),
        (
            "group-big",
            Layer::new().file("etc/group", &big, 0o644),
            "larger than",
        ),
    ] {
        let image = push_and_pull(
            &f,
            ImageBuilder::with_passwd().layer(layer),
            &format!("test/{name}"),
        )
        .await;
        let err = c
            .create_container(create_as(image, "tester"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains("/etc/group") && err.message().contains(why),
            "{name}: {}",
            err.message()
        );
    }

    // Nothing was created, and the agent still serves: a plain image's user resolves.
    let listed = c
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    let id = c
        .create_container(create_as(f.image.clone(), "tester"))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    start(&mut c, &id).await;
    let s = wait_exited(&mut c, &id).await;
    assert!(
        std::fs::read_to_string(&s.log_path)
            .unwrap()
            .contains(" stdout F 1000\n"),
        "tester's uid"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "hostile-etc");
}
