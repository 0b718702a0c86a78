//! The fuzz targets' own code (fuzz/bodies/) run in `make test`: each body over its seeds in
//! fuzz/corpus/<target>/, then over seeded random mutations of them. Nothing is instrumented and
//! nothing guides the mutations (that is `make fuzz`, with libFuzzer); this keeps the bodies
//! building with the workspace and their checks holding near the inputs that once mattered.
//!
//! `BERTH_FUZZ_MUTATIONS=N` sets how many mutated inputs every target gets; `BERTH_FUZZ_SEED=S`
//! replays a run, whose seed each test prints first (cargo test shows it when the test fails).

#[path = "../../fuzz/bodies/cni_result.rs"]
mod cni_result;
#[path = "../../fuzz/bodies/cri_log_writer.rs"]
mod cri_log_writer;
#[path = "../../fuzz/bodies/h2_authority.rs"]
mod h2_authority;
#[path = "../../fuzz/bodies/hosts_toml.rs"]
mod hosts_toml;
#[path = "../../fuzz/bodies/image_manifest.rs"]
mod image_manifest;
#[path = "../../fuzz/bodies/image_reference.rs"]
mod image_reference;
#[path = "../../fuzz/bodies/spdy_frames.rs"]
mod spdy_frames;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

/// Mutated inputs per target unless `BERTH_FUZZ_MUTATIONS` says otherwise.
const MUTATIONS: usize = 20_000;
/// Mutations grow no input past libFuzzer's default `-max_len` for seeds this small.
const MAX_LEN: usize = 4096;

#[test]
fn image_reference_target_survives_its_seeds_and_their_mutations() {
    survives("image_reference", image_reference::run, MUTATIONS);
}

#[test]
fn hosts_toml_target_survives_its_seeds_and_their_mutations() {
    survives("hosts_toml", hosts_toml::run, MUTATIONS);
}

#[test]
fn image_manifest_target_survives_its_seeds_and_their_mutations() {
    survives("image_manifest", image_manifest::run, MUTATIONS);
}

#[test]
fn cni_result_target_survives_its_seeds_and_their_mutations() {
    survives("cni_result", cni_result::run, MUTATIONS);
}

#[test]
fn cri_log_writer_target_survives_its_seeds_and_their_mutations() {
    survives("cri_log_writer", cri_log_writer::run, MUTATIONS);
}

#[test]
fn h2_authority_target_survives_its_seeds_and_their_mutations() {
    survives("h2_authority", h2_authority::run, MUTATIONS);
}

#[test]
fn spdy_frames_target_survives_its_seeds_and_their_mutations() {
    survives("spdy_frames", spdy_frames::run, MUTATIONS);
}

/// Runs `body` on every seed of `target`, then on `default_mutations` (or
/// `BERTH_FUZZ_MUTATIONS`) mutations of them; fails on the first input that makes it panic.
fn survives(target: &str, body: fn(&[u8]), default_mutations: usize) {
    let seed = run_seed();
    let mutations = match std::env::var("BERTH_FUZZ_MUTATIONS") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("BERTH_FUZZ_MUTATIONS={n:?} is not a count")),
        Err(_) => default_mutations,
    };
    eprintln!("{target}: seed {seed}, {mutations} mutations (BERTH_FUZZ_SEED={seed} replays them)");
    let seeds = read_seeds(target);
    for (name, input) in &seeds {
        survives_one(target, body, seed, &format!("seed file {name}"), input);
    }
    let inputs: Vec<&[u8]> = seeds.iter().map(|(_, input)| input.as_slice()).collect();
    let mut rng = Rng::new(seed);
    for i in 0..mutations {
        let input = mutate(&mut rng, &inputs);
        survives_one(target, body, seed, &format!("mutation {i}"), &input);
    }
}

/// Runs `body` on one input; a panic fails the test with what replays it.
fn survives_one(target: &str, body: fn(&[u8]), seed: u64, what: &str, input: &[u8]) {
    let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(input))) else {
        return;
    };
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(not a string)");
    let base64 = base64::engine::general_purpose::STANDARD.encode(input);
    panic!(
        "fuzz target {target} panicked on {what} (seed {seed}, BERTH_FUZZ_SEED={seed} replays it): \
         {message}\ninput, {} bytes, as base64 (`base64 -d` it into a file and give the file to \
         fuzz/target/<host>/release/{target} to run it under libFuzzer):\n{base64}",
        input.len()
    );
}

/// The seed of this run, the same for every test: `BERTH_FUZZ_SEED` or the clock.
fn run_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("BERTH_FUZZ_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("BERTH_FUZZ_SEED={s:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_nanos() as u64,
    })
}

/// The files of fuzz/corpus/<target>/ by name, sorted so that a seed replays the same inputs.
fn read_seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display())));
    let mut seeds = Vec::new();
    for entry in entries {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let input = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        seeds.push((entry.file_name().to_string_lossy().into_owned(), input));
    }
    assert!(!seeds.is_empty(), "{}: no seed files", dir.display());
    seeds.sort();
    seeds
}

/// Byte values that sit on a boundary (sign, ASCII, all bits) or that parsers split on.
const INTERESTING: [u8; 16] = [
    0, 1, 0x7f, 0x80, 0xff, 0xfe, b'\n', b'\r', b' ', b'"', b'/', b':', b'@', b'.', b'{', b'[',
];

/// One seed with 1 to 8 random edits, of kinds libFuzzer's own mutator makes.
fn mutate(rng: &mut Rng, seeds: &[&[u8]]) -> Vec<u8> {
    let mut data = rng.pick(seeds).to_vec();
    for _ in 0..1 + rng.below(8) {
        edit(rng, &mut data, seeds);
        data.truncate(MAX_LEN);
    }
    data
}

fn edit(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[&[u8]]) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => data[rng.below(len)] ^= 1 << rng.below(8),
        1 if len > 0 => data[rng.below(len)] = *rng.pick(&INTERESTING),
        2 if len > 0 => data[rng.below(len)] = rng.byte(),
        // A 16- or 32-bit value in either byte order: lengths, counts and ids of binary frames.
        3 if len >= 4 => {
            let width = if rng.below(2) == 0 { 2 } else { 4 };
            let value: u64 = match rng.below(4) {
                0 => 0,
                1 => u64::MAX,
                2 => 1 << rng.below(width * 8),
                _ => rng.below(512) as u64,
            };
            let at = rng.below(len - width + 1);
            if rng.below(2) == 0 {
                data[at..at + width].copy_from_slice(&value.to_be_bytes()[8 - width..]);
            } else {
                data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
        }
        // Delete a byte or a run of them.
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        // Copy a chunk of the input somewhere else in it.
        5 if len > 0 => {
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(256));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        // Splice: this input up to some point, then another seed from some point on.
        6 => {
            let other = rng.pick(seeds);
            let from = rng.below(other.len() + 1);
            data.truncate(rng.below(len + 1));
            data.extend_from_slice(&other[from..]);
        }
        7 if len > 0 => data.truncate(rng.below(len)),
        // Insert a byte or a run of one byte (also what the edits above do to an empty input).
        _ => {
            let byte = if rng.below(2) == 0 {
                *rng.pick(&INTERESTING)
            } else {
                rng.byte()
            };
            let n = if rng.below(2) == 0 {
                1
            } else {
                1 + rng.below(64)
            };
            let at = rng.below(len + 1);
            data.splice(at..at, std::iter::repeat_n(byte, n));
        }
    }
}

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators"):
/// small, fast and, from a printed seed, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // The state must not be 0; splitmix64's finalizer also spreads nearby seeds apart.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`; `n` must not be 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
