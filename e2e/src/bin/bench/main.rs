//! `make bench`: berth's figures, printed as a table. With `--peer unix:///path.sock` the same
//! CRI measurements run against another runtime's socket (e.g. the lab's containerd) for ratios.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod burst;
mod containers;
mod sandboxes;
mod streaming;

use berth_e2e::images::ImageBuilder;
use berth_e2e::network::{Extra, TestNetwork};
use berth_e2e::registry::TestRegistry;
use berth_e2e::{connect, TestAgent};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest, RemoveImageRequest,
    StatusRequest, VersionRequest,
};

const ROUND_TRIPS: usize = 5000;
/// Cold pulls per image; the median is reported.
const PULLS: usize = 5;
/// The lab's hosts.toml files (../shared/lab/containerd.sh), sending docker.io to 127.0.0.1:5000.
const LAB_HOSTS: &str = "/etc/containerd/lab-certs.d";
/// The lab's CNI network (bridge crilab0, 10.88.0.0/16), shared with containerd.
const LAB_CONFLIST: &str = "/etc/cni/net.d/10-crilab.conflist";
/// The peer's pid file, beside its socket (both lab containerds write one there).
const PEER_PID_FILE: &str = "containerd.pid";
const CONNECTS: usize = 300;
/// How long memory figures wait after the pods they count were made: they read a pod's helpers
/// as they stay, not as its start left them (berth's monitor gives back the pages a start
/// touched after a second idle). The same wait for every runtime.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

pub(crate) struct Figures {
    name: String,
    rows: Vec<(String, String)>,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn measure(socket: &Path, name: &str) -> Figures {
    let mut rows = Vec::new();
    let mut client = RuntimeServiceClient::new(connect(socket).await.expect("connect"));
    for _ in 0..200 {
        client
            .version(VersionRequest::default())
            .await
            .expect("warm-up Version");
    }
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    let start = Instant::now();
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        client
            .version(VersionRequest::default())
            .await
            .expect("Version");
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    samples.sort();
    rows.push((
        "Version round-trip, median".into(),
        micros(percentile(&samples, 0.5)),
    ));
    rows.push((
        "Version round-trip, p99".into(),
        micros(percentile(&samples, 0.99)),
    ));
    rows.push((
        "Version, sequential throughput".into(),
        format!("{:.0} RPC/s", ROUND_TRIPS as f64 / total.as_secs_f64()),
    ));

    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..1000 {
        let t = Instant::now();
        client
            .status(StatusRequest { verbose: false })
            .await
            .expect("Status");
        samples.push(t.elapsed());
    }
    samples.sort();
    rows.push((
        "Status round-trip, median".into(),
        micros(percentile(&samples, 0.5)),
    ));

    let mut samples = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let t = Instant::now();
        let mut c = RuntimeServiceClient::new(connect(socket).await.expect("connect"));
        c.version(VersionRequest::default()).await.expect("Version");
        samples.push(t.elapsed());
    }
    samples.sort();
    rows.push((
        "connect + first Version, median".into(),
        micros(percentile(&samples, 0.5)),
    ));
    Figures {
        name: name.to_string(),
        rows,
    }
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

/// Cold pulls: RemoveImage, a pause for the runtime's asynchronous GC (containerd collects
/// content a moment after the image goes), then a timed PullImage. Median and MB/s.
///
/// Every image the runtime holds is removed first: the lab's images all share the small
/// image's one layer (busybox), pause included, so a runtime still holding any of them (a
/// peer keeps its pause image between runs) would pull that image warm.
async fn measure_pulls(socket: &Path, images: &[(String, String)], figures: &mut Figures) {
    let mut client = ImageServiceClient::new(connect(socket).await.expect("connect"));
    let held = client
        .list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    for image in &held {
        let _ = client
            .remove_image(RemoveImageRequest {
                image: spec(&image.id),
            })
            .await;
    }
    if !held.is_empty() {
        eprintln!(
            "berth-bench: removed the {} images {} held, for cold pulls",
            held.len(),
            socket.display()
        );
    }
    for (label, reference) in images {
        let mut samples = Vec::with_capacity(PULLS);
        let mut size = 0;
        for _ in 0..PULLS {
            let _ = client
                .remove_image(RemoveImageRequest {
                    image: spec(reference),
                })
                .await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let t = Instant::now();
            client
                .pull_image(PullImageRequest {
                    image: spec(reference),
                    auth: None,
                    sandbox_config: None,
                })
                .await
                .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
            samples.push(t.elapsed());
            size = client
                .image_status(ImageStatusRequest {
                    image: spec(reference),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().image)
                .map(|i| i.size)
                .unwrap_or(0);
        }
        samples.sort();
        let median = percentile(&samples, 0.5);
        figures.rows.push((
            format!("pull {label}, cold, median"),
            format!("{:.0} ms", median.as_secs_f64() * 1e3),
        ));
        figures.rows.push((
            format!("pull {label}, throughput"),
            format!("{:.1} MB/s", size as f64 / 1e6 / median.as_secs_f64()),
        ));
    }
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    berth_common::procfs::kib(pid, "status", "VmRSS:")
}

/// The CNI plugins' time in ADD so far (seconds, summed over the chain's plugins) and the ADDs
/// made (the chain's first plugin counts one per pod), from `berth_cni_operation_duration_seconds`.
fn cni_totals(agent: &TestAgent, verb: &str) -> (f64, f64) {
    let (mut seconds, mut pods) = (0.0, 0.0f64);
    let operation = format!("operation=\"{verb}\"");
    for line in agent.scrape().lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if !series.contains(&operation) {
            continue;
        }
        if series.starts_with("berth_cni_operation_duration_seconds_sum") {
            seconds += value;
        } else if series.starts_with("berth_cni_operation_duration_seconds_count") {
            pods = pods.max(value);
        }
    }
    (seconds, pods)
}

/// What no runtime can go under, printed beside the figures they bound: the CNI plugins' own
/// time per pod over the sequential RunPodSandbox and Stop+RemovePodSandbox runs (the same
/// plugins and conflist a lab peer runs), and fork+exec+wait of `/bin/true` from this process.
fn floors(cni: [((f64, f64), (f64, f64)); 2], figures: &mut Figures) {
    for (verb, (before, after)) in ["ADD", "DEL"].into_iter().zip(cni) {
        let (seconds, pods) = (after.0 - before.0, after.1 - before.1);
        figures.rows.push((
            cni_floor_row(verb),
            match pods > 0.0 {
                true => format!("{:.1} ms", seconds / pods * 1e3),
                false => "-".into(),
            },
        ));
    }
    let mut spawns: Vec<Duration> = (0..100)
        .map(|_| {
            let t = Instant::now();
            std::process::Command::new("/bin/true")
                .status()
                .expect("run /bin/true");
            t.elapsed()
        })
        .collect();
    spawns.sort();
    figures.rows.push((
        "floor: fork+exec+wait of /bin/true, median".into(),
        format!("{:.2} ms", percentile(&spawns, 0.5).as_secs_f64() * 1e3),
    ));
}

/// A process's proportional set size (KiB), from /proc/<pid>/smaps_rollup.
pub(crate) fn pss_kib(pid: u32) -> Option<u64> {
    berth_common::procfs::kib(pid, "smaps_rollup", "Pss:")
}

/// A figure's number and unit (`13.2 ms` → 13.2, `ms`); `None` for text (`Unimplemented`, `-`)
/// and for a pair of figures (`0.63 ms / 1.15 ms`).
fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let (number, unit) = text.trim().split_once(' ')?;
    if unit.contains(' ') {
        return None;
    }
    Some((number.parse().ok()?, unit))
}

/// One figure over another (`0.24×`) when both are numbers in the same unit.
fn ratio(figure: &str, over: &str) -> Option<String> {
    let (a, unit_a) = number_and_unit(figure)?;
    let (b, unit_b) = number_and_unit(over)?;
    (unit_a == unit_b && b > 0.0).then(|| format!("{:.2}×", a / b))
}

/// The figure of the row named `name` (its first, when a run has two).
fn figure<'a>(figures: &'a Figures, name: &str) -> Option<&'a str> {
    figures
        .rows
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The name of [`floors`]' row for CNI `verb` (`ADD` or `DEL`).
fn cni_floor_row(verb: &str) -> String {
    format!("floor: CNI {verb}, the plugins' own time per pod (sequential)")
}

/// berth's pod start and teardown over what the CNI plugins alone took for them.
fn over_floors(figures: &mut Figures) {
    for (row, figure_row, verb) in [
        (
            "RunPodSandbox median / the CNI ADD floor",
            "RunPodSandbox, median",
            "ADD",
        ),
        (
            "Stop+RemovePodSandbox median / the CNI DEL floor",
            "Stop+RemovePodSandbox, median",
            "DEL",
        ),
    ] {
        let over = figure(figures, figure_row)
            .zip(figure(figures, &cni_floor_row(verb)))
            .and_then(|(a, b)| ratio(a, b));
        if let Some(over) = over {
            figures.rows.push((row.into(), over));
        }
    }
}

fn print(figures: &[Figures]) {
    let width = figures[0]
        .rows
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0);
    // With a peer: berth's figure over the peer's, on each row where both are numbers in one
    // unit (lower is better for times and memory, higher for rates).
    let ratios = figures.len() == 2;
    print!("{:width$}", "", width = width + 2);
    for f in figures {
        print!("  {:>18}", f.name);
    }
    if ratios {
        print!("  {:>10}", "berth/peer");
    }
    println!();
    for (i, (key, _)) in figures[0].rows.iter().enumerate() {
        print!("{key:width$}  ", width = width);
        let cells: Vec<&str> = figures
            .iter()
            .map(|f| f.rows.get(i).map(|r| r.1.as_str()).unwrap_or("-"))
            .collect();
        for cell in &cells {
            print!("  {cell:>18}");
        }
        if ratios {
            print!("  {:>10}", ratio(cells[0], cells[1]).unwrap_or_default());
        }
        println!();
    }
}

#[tokio::main]
async fn main() {
    let mut peer: Option<PathBuf> = None;
    let mut peer_pid: Option<u32> = None;
    let mut lab = false;
    // `--only pulls|sandboxes|containers|burst|streaming`: just that section (and the figures it
    // needs), to iterate on it.
    let mut only: Option<String> = None;
    // `--agent-config TOML`: appended to berthd's configuration, to compare settings (say
    // `[runtime]` / `exec_standby = false`).
    let mut agent_config = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--peer" => {
                let value = args.next().expect("--peer needs unix:///path.sock");
                peer = Some(PathBuf::from(value.trim_start_matches("unix://")));
            }
            "--peer-pid" => {
                let value = args.next().and_then(|v| v.parse().ok());
                peer_pid = Some(value.expect("--peer-pid needs the peer daemon's pid"));
            }
            "--lab" => lab = true,
            "--agent-config" => {
                agent_config = args.next().expect("--agent-config needs TOML");
            }
            "--only" => {
                only = Some(args.next().expect(
                    "--only needs a section: pulls, sandboxes, containers, burst, streaming",
                ))
            }
            other => panic!(
                "unknown argument {other}; usage: berth-bench [--peer unix:///path.sock \
                 [--peer-pid PID]] [--lab] [--only pulls|sandboxes|containers|burst|streaming] \
                 [--agent-config TOML]"
            ),
        }
    }

    // Images: the lab registry's (so a peer runtime pulls the very same bytes), or our own
    // registry with the same shapes: a ~1 MB one-layer busybox and ~50 MB in six layers.
    let (_registry, images, extra) = if lab {
        let images = vec![
            (
                "1 MB / 1 layer".to_string(),
                "docker.io/crilab/small:1".to_string(),
            ),
            (
                "50 MB / 6 layers".to_string(),
                "docker.io/crilab/large:50mb".to_string(),
            ),
        ];
        (
            None,
            images,
            format!("[registry]\nconfig_path = {LAB_HOSTS:?}\n"),
        )
    } else {
        let registry = TestRegistry::start();
        let small = ImageBuilder::busybox().push(&registry, "bench/small", "1");
        let large = ImageBuilder::large().push(&registry, "bench/large", "50mb");
        let images = vec![
            ("1 MB / 1 layer".to_string(), small.image_ref()),
            ("50 MB / 6 layers".to_string(), large.image_ref()),
        ];
        (Some(registry), images, String::new())
    };

    // As deployed (`berthd config default`): info, not the tests' debug log, whose h2 frame
    // lines cost every RPC.
    let agent = TestAgent::start_with(&format!(
        "{extra}\n[log]\nlevel = \"info\"\n{agent_config}\n"
    ))
    .await;
    // Pods get the lab's network (the same conflist containerd uses) or one of our own.
    let _network = if lab {
        std::fs::copy(
            LAB_CONFLIST,
            agent.paths.cni_conf_dir.join("10-crilab.conflist"),
        )
        .expect("copy the lab's conflist (run ../shared/lab/containerd.sh start first)");
        None
    } else {
        Some(TestNetwork::create(&agent.paths.cni_conf_dir, Extra::None))
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle_rss = rss_kib(agent.pid());
    let everything = only.is_none();
    let section = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut berth = Figures {
        name: "berth".into(),
        rows: Vec::new(),
    };
    if everything {
        berth = measure(&agent.paths.socket, "berth").await;
        measure_pulls(&agent.paths.socket, &images, &mut berth).await;
    } else if section("pulls") {
        measure_pulls(&agent.paths.socket, &images, &mut berth).await;
    } else {
        // The section's containers need the image.
        measure_pulls(
            &agent.paths.socket,
            &images[..1],
            &mut Figures {
                name: String::new(),
                rows: Vec::new(),
            },
        )
        .await;
    }
    let pods_dir = agent
        .paths
        .state
        .join("pods")
        .to_string_lossy()
        .into_owned();
    // The pods' monitors, and the standbys waiting for the next pod and the next ExecSync
    // (they are the agent's too).
    let standby = format!("\0monitor-standby\0{}\0", agent.paths.state.display());
    let exec_standby = format!("\0init\0exec-standby\0{}\0", agent.paths.state.display());
    let is_monitor = move |_: &str, cmdline: &str| {
        cmdline.contains(&pods_dir) || cmdline.contains(&standby) || cmdline.contains(&exec_standby)
    };
    let mut cni_floor = None;
    if section("sandboxes") {
        let before = ["ADD", "DEL"].map(|verb| cni_totals(&agent, verb));
        sandboxes::measure(&agent.paths.socket, "berth", &is_monitor, &mut berth).await;
        let after = ["ADD", "DEL"].map(|verb| cni_totals(&agent, verb));
        cni_floor = Some([(before[0], after[0]), (before[1], after[1])]);
    }
    if section("containers") {
        containers::measure(
            &agent.paths.socket,
            "berth",
            &images[0].1,
            agent.pid(),
            &is_monitor,
            &mut berth,
        )
        .await;
    }
    if section("burst") {
        burst::measure(
            &agent.paths.socket,
            "berth",
            &images[0].1,
            agent.pid(),
            &mut berth,
        )
        .await;
    }
    if section("streaming") {
        streaming::measure(
            &agent.paths.socket,
            "berth",
            &images[0].1,
            agent.pid(),
            &is_monitor,
            &mut berth,
        )
        .await;
    }
    berth.rows.push((
        "agent RSS idle (before the RPCs)".into(),
        idle_rss
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or("-".into()),
    ));
    berth.rows.push((
        "agent RSS after the RPCs and pulls".into(),
        rss_kib(agent.pid())
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or("-".into()),
    ));
    if let Some(cni) = cni_floor {
        floors(cni, &mut berth);
        over_floors(&mut berth);
    }
    let mut all = vec![berth];
    if let Some(peer) = peer {
        let mut figures = Figures {
            name: "peer".into(),
            rows: Vec::new(),
        };
        if everything {
            figures = measure(&peer, "peer").await;
        }
        if lab {
            let is_shim =
                |comm: &str, _: &str| comm.starts_with("containerd-shim") || comm == "pause";
            if everything || section("pulls") {
                measure_pulls(&peer, &images, &mut figures).await;
            } else {
                let mut scratch = Figures {
                    name: String::new(),
                    rows: Vec::new(),
                };
                measure_pulls(&peer, &images[..1], &mut scratch).await;
            }
            if section("sandboxes") {
                sandboxes::measure(&peer, "peer", &is_shim, &mut figures).await;
            }
            // The daemon whose CPU and memory count: as given, or from the pid file beside its
            // socket.
            let containerd_pid = peer_pid
                .or_else(|| {
                    let file = peer.parent()?.join(PEER_PID_FILE);
                    std::fs::read_to_string(file).ok()?.trim().parse().ok()
                })
                .unwrap_or(0);
            if section("containers") {
                containers::measure(
                    &peer,
                    "peer",
                    &images[0].1,
                    containerd_pid,
                    &is_shim,
                    &mut figures,
                )
                .await;
            }
            if section("burst") {
                burst::measure(&peer, "peer", &images[0].1, containerd_pid, &mut figures).await;
            }
            if section("streaming") {
                streaming::measure(
                    &peer,
                    "peer",
                    &images[0].1,
                    containerd_pid,
                    &is_shim,
                    &mut figures,
                )
                .await;
            }
        }
        all.push(figures);
    }
    println!("berth-bench: berthd {}", berth_e2e::berthd_path().display());
    print(&all);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_is_printed_only_for_two_numbers_in_one_unit() {
        assert_eq!(ratio("13.2 ms", "54.7 ms").as_deref(), Some("0.24×"));
        assert_eq!(ratio("36.2 pods/s", "7.9 pods/s").as_deref(), Some("4.58×"));
        assert_eq!(ratio("1166 KiB", "730 KiB").as_deref(), Some("1.60×"));
        // Other units, text, pairs, a zero: nothing.
        assert_eq!(ratio("1.2 s", "900 ms"), None);
        assert_eq!(ratio("0.63 ms", "Unimplemented"), None);
        assert_eq!(ratio("0.63 ms / 1.15 ms", "17.57 ms / 23.66 ms"), None);
        assert_eq!(ratio("16.3 ms", "not offered"), None);
        assert_eq!(ratio("1 ms", "0 ms"), None);
        assert_eq!(ratio("-", "-"), None);
    }

    #[test]
    fn pod_start_and_teardown_are_set_over_the_plugins_floors() {
        let mut figures = Figures {
            name: "berth".into(),
            rows: vec![
                ("RunPodSandbox, median".into(), "17.8 ms".into()),
                ("Stop+RemovePodSandbox, median".into(), "42.0 ms".into()),
                (
                    "floor: CNI ADD, the plugins' own time per pod (sequential)".into(),
                    "11.9 ms".into(),
                ),
                (
                    "floor: CNI DEL, the plugins' own time per pod (sequential)".into(),
                    "-".into(),
                ),
            ],
        };
        over_floors(&mut figures);
        assert_eq!(
            figures.rows[4..],
            [(
                "RunPodSandbox median / the CNI ADD floor".to_string(),
                "1.50×".to_string()
            )]
        );
    }
}
