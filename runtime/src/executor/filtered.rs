//! A container whose seccomp program the agent compiled ([`crate::seccomp_filter`]).
//!
//! libcontainer only knows the spec's profile and compiles it in the container's init. For a
//! bundle with a compiled program, `create` gives libcontainer a copy of the spec without the
//! profile (in `<bundle>/executor/`, naming the bundle it came from) and an [`Executor`] that
//! loads the program in its `validate` step: inside the container, after the credentials and
//! capabilities are set and before libcontainer reports the init ready, as libcontainer itself
//! loads a filter under no_new_privs. Without no_new_privs, loading needs CAP_SYS_ADMIN, which
//! libcontainer has already dropped by then; so the copy lends the init CAP_SYS_ADMIN in its
//! effective (and permitted) set, and the executor takes it back right after the load, before
//! anything of the container runs. The bounding set never holds the lent capability, so the
//! container's execve could not keep it either.

use std::path::{Path, PathBuf};

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{Capability, Spec};

use crate::seccomp_filter::{self, FILTER_FILE};

/// The copy of the spec libcontainer is given, under the bundle.
const EXECUTOR_BUNDLE: &str = "executor";
/// On that copy: the bundle whose `config.json` is the container's own spec.
const SOURCE_ANNOTATION: &str = "io.berth.executor.source-bundle";

/// A compiled program read from a bundle, with the flags its profile asks for.
#[derive(Clone)]
pub(super) struct Program {
    instructions: Vec<libc::sock_filter>,
    flags: libc::c_uint,
}

impl Program {
    /// The bundle's compiled program, if the spec has a profile and the agent compiled it.
    pub(super) fn of_bundle(bundle: &Path, spec: &Spec) -> Result<Option<Program>, String> {
        let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
            return Ok(None);
        };
        let file = bundle.join(FILTER_FILE);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("read {}: {e}", file.display())),
        };
        let instructions =
            seccomp_filter::parse(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(Some(Program {
            instructions,
            flags: seccomp_filter::flags(profile),
        }))
    }

    pub(super) fn install(&self) -> Result<(), String> {
        seccomp_filter::install(&self.instructions, self.flags)
            .map_err(|e| format!("load the seccomp filter: {e}"))
    }
}

/// The spec a bundle stands for: its own, or for libcontainer's copy, the one it came from.
pub(super) fn source_spec(bundle: &Path, spec: Spec) -> Result<(PathBuf, Spec), String> {
    let source = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(SOURCE_ANNOTATION))
        .map(PathBuf::from);
    match source {
        Some(source) => {
            let config = source.join("config.json");
            let spec =
                Spec::load(&config).map_err(|e| format!("load {}: {e}", config.display()))?;
            Ok((source, spec))
        }
        None => Ok((bundle.to_path_buf(), spec)),
    }
}

/// For a bundle with a compiled program: libcontainer's copy of the spec, written, and the
/// executor that loads the program. `None` leaves the bundle to libcontainer as it is.
pub(super) fn prepare(bundle: &Path, spec: &Spec) -> Result<Option<(PathBuf, Filtered)>, String> {
    let Some(program) = Program::of_bundle(bundle, spec)? else {
        return Ok(None);
    };
    let mut copy = spec.clone();
    let mut linux = copy.linux().clone().unwrap_or_default();
    linux.set_seccomp(None);
    copy.set_linux(Some(linux));
    if let Some(mut root) = copy.root().clone() {
        root.set_path(bundle.join(root.path()));
        copy.set_root(Some(root));
    }
    let mut lent = Lent::default();
    if let Some(mut process) = copy.process().clone() {
        let no_new_privs = process.no_new_privileges() == Some(true);
        if let Some(mut caps) = process.capabilities().clone() {
            let lacks = |set: &Option<oci_spec::runtime::Capabilities>| {
                set.as_ref()
                    .is_some_and(|s| !s.contains(&Capability::SysAdmin))
            };
            // A root init without an effective set in the spec keeps all of its own.
            if !no_new_privs && lacks(caps.effective()) {
                lent.effective = true;
                lent.permitted = lacks(caps.permitted());
                let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                    set.clone().map(|mut s| {
                        s.insert(Capability::SysAdmin);
                        s
                    })
                };
                let (effective, permitted) = (add(caps.effective()), add(caps.permitted()));
                caps.set_effective(effective).set_permitted(permitted);
                process.set_capabilities(Some(caps));
                copy.set_process(Some(process));
            }
        }
    }
    let mut annotations = copy.annotations().clone().unwrap_or_default();
    annotations.insert(SOURCE_ANNOTATION.to_string(), bundle.display().to_string());
    copy.set_annotations(Some(annotations));
    let dir = bundle.join(EXECUTOR_BUNDLE);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    copy.save(dir.join("config.json"))
        .map_err(|e| format!("write {}/config.json: {e}", dir.display()))?;
    Ok(Some((dir, Filtered { program, lent })))
}

/// What the copy of the spec lent the init, to be taken back after the load.
#[derive(Clone, Copy, Default)]
struct Lent {
    effective: bool,
    permitted: bool,
}

/// libcontainer's default executor, with the compiled program loaded in `validate`.
#[derive(Clone)]
pub(super) struct Filtered {
    program: Program,
    lent: Lent,
}

impl Executor for Filtered {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)?;
        self.program
            .install()
            .and_then(|()| self.take_back())
            .map_err(ExecutorValidationError::ArgValidationError)
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        libcontainer::workload::default::get_executor().exec(spec)
    }
}

impl Filtered {
    fn take_back(&self) -> Result<(), String> {
        if !self.lent.effective {
            return Ok(());
        }
        let bit = super::caps::bit(&Capability::SysAdmin);
        let mut sets = super::caps::get()?;
        sets.effective &= !bit;
        if self.lent.permitted {
            sets.permitted &= !bit;
        }
        super::caps::set(sets).map_err(|e| format!("give back CAP_SYS_ADMIN: {e}"))
    }
}
