//! The `cni_result` fuzz target's body; its input and its checks are described in
//! `fuzz/fuzz_targets/cni_result.rs`. libFuzzer runs it there, coverage-guided (`make fuzz`);
//! `e2e/tests/fuzz_targets.rs` runs it over the seeds and seeded mutations of them (`make test`).

use berth_cni::CniResult;

pub fn run(data: &[u8]) {
    let Ok(result) = CniResult::from_slice(data) else {
        return;
    };
    let _ = result.cni_version();
    let ips = result.pod_ips("eth0");
    let count = ips.primary.iter().count() + ips.additional.len();
    // The pod's IPs are some of the result's, and there are some whenever the result has any.
    assert!(count <= result.ips().len());
    assert_eq!(count == 0, result.ips().is_empty());
    let _ = (result.interfaces(), result.routes(), result.dns());
    // The result cache writes `raw` out as JSON and reads it back: what was read once must
    // read again, to the same addresses. (`raw` itself is not compared: serde_json may round a
    // float's last digit on the way back, and no field berth reads is a float.)
    let again = CniResult::from_slice(result.raw().to_string().as_bytes())
        .expect("a result's own JSON reads again");
    assert_eq!(again.ips(), result.ips());
    assert_eq!(again.interfaces(), result.interfaces());
    assert_eq!(again.routes(), result.routes());
    assert_eq!(again.dns(), result.dns());
    assert_eq!(again.pod_ips("eth0"), ips);
}
